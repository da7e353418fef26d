"""Build once, run many: the pure parts (manifest, content names, arch images, secret filtering,
the node side's pull plan, the build secrets endpoint)."""

from __future__ import annotations

import json
import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.errors import ExecutorError, UsageError
from pytest_madengine.executors.docker import buildsecrets, manifest, publish
from pytest_madengine.executors.docker.manifest import BuildRecord, ImageEntry, NodePull, RegistryTarget

H = "ab" * 32


def _entry(**kw: Any) -> ImageEntry:
    base: dict[str, Any] = {"key": "ci-m_df", "model": "m", "docker_image": "ci-m_df", "dockerfile": "docker/df.Dockerfile",
                            "docker_sha": "sha256:" + "1" * 64, "image_id": "sha256:" + "2" * 64, "build_hash": H,
                            "build_duration": 1.25, "registry": "127.0.0.1:5000/ns",
                            "registry_image": f"127.0.0.1:5000/ns/ci-m_df:{H}"}
    base.update(kw)
    return ImageEntry(**base)


def test_registry_target_names_images_by_content() -> None:
    t = RegistryTarget.parse("127.0.0.1:5000/team/ml")
    assert (t.host, t.namespace) == ("127.0.0.1:5000", "team/ml")
    assert t.reference("ci-Model_df", H) == f"127.0.0.1:5000/team/ml/ci-model_df:{H}"
    assert RegistryTarget.parse("localhost:5000").reference("ci-a", H) == f"localhost:5000/ci-a:{H}"
    hub = RegistryTarget.parse("myorg")
    assert (hub.host, hub.namespace) == ("docker.io", "myorg")
    assert RegistryTarget.parse("dockerhub/org").namespace == "org"
    with pytest.raises(UsageError, match="--mad-registry"):
        RegistryTarget.parse("bad host")
    with pytest.raises(UsageError, match="namespace"):
        RegistryTarget.parse("reg.example.com/Upper")
    with pytest.raises(ValueError):
        manifest.content_tag("latest")


def test_secret_args_are_never_written_down() -> None:
    args = {"BASE_DOCKER": "img", "MAD_SECRETS_HF": "hf-123", "HF_TOKEN": "t", "API_KEY": "k", "OTHER": "leaked-value"}
    shown = manifest.public_args(args, {"leaked-value"})
    assert shown == {"API_KEY": "***", "BASE_DOCKER": "img", "HF_TOKEN": "***", "MAD_SECRETS_HF": "***", "OTHER": "***"}
    assert "hf-123" not in _entry(build_args=shown).build_command()


def test_compose_counts_a_failed_push_as_a_failure() -> None:
    ok = BuildRecord("m", (_entry(),), {"name": "m", "cred": "C"})
    pushfail = BuildRecord("n", (_entry(key="ci-n_df", docker_image="ci-n_df", model="n", registry_image="", push_error="denied"),),
                           {"name": "n"}, error="denied")
    doc = manifest.compose([ok, pushfail], {"docker_build_arg": {"MAD_SECRETS_X": "s", "A": "1"}, "gpu_vendor": "AMD",
                                            "unrelated": 1}, ["C"])
    assert list(doc["built_images"]) == ["ci-m_df"]
    assert doc["built_models"]["ci-m_df"]["env_vars"]["DOCKER_IMAGE_NAME"] == f"127.0.0.1:5000/ns/ci-m_df:{H}"
    assert doc["summary"]["failed_pushes"] == 1 and doc["summary"]["successful_pushes"] == 1
    assert doc["push_failures"] == [{"model": "n", "docker_image": "ci-n_df", "registry": "127.0.0.1:5000/ns",
                                     "error": "denied"}]
    assert doc["summary"]["failed_builds"] == [{"model": "n", "error": "denied"}]
    assert doc["context"] == {"docker_build_arg": {"A": "1", "MAD_SECRETS_X": "***"}, "gpu_vendor": "AMD"}
    assert doc["credentials_required"] == ["C"]
    # The record survives the trip to the xdist controller.
    assert BuildRecord.from_json(json.loads(json.dumps(ok.to_json()))) == ok


def test_write_atomic_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "build_manifest.json"
    doc = manifest.compose([BuildRecord("m", (_entry(gpu_architecture="gfx942"),), {"name": "m"})], {}, [])
    manifest.write_atomic(path, doc)
    assert [p.name for p in path.parent.iterdir()] == ["build_manifest.json"]  # no temporary file left
    m = manifest.load(path)
    assert m.model_names == ["m"]
    e = m.image_for("m", "gfx90a")  # the only image: taken whatever the arch
    assert e.registry_image.endswith(H) and e.gpu_architecture == "gfx942" and e.build_duration == 1.25


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "build_manifest.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        manifest.write_atomic(path, {"bad": object()})
    assert path.read_text() == '{"old": 1}' and len(list(tmp_path.iterdir())) == 1


def test_image_for_picks_by_arch_and_names_what_is_missing(tmp_path: Path) -> None:
    m = manifest.Manifest(tmp_path / "x.json", (_entry(key="a", gpu_architecture="gfx942"),
                                                _entry(key="b", gpu_architecture="gfx90a")), {})
    assert m.image_for("m", "gfx90a").key == "b"
    with pytest.raises(ExecutorError, match="none is for this host's GPU architecture gfx1100"):
        m.image_for("m", "gfx1100")
    with pytest.raises(ExecutorError, match=r"model 'zz' is not in the manifest .*x\.json"):
        m.image_for("zz")


@pytest.mark.parametrize(("text", "match"), [
    ("", "not valid JSON"), ("[]", "must hold a JSON object"), ("{}", "'built_images' must be an object"),
    ('{"built_images": {"i": 3}}', "entry 'i' must be an object"),
    ('{"built_images": {"i": {}}}', "entry 'i': field 'model' is missing"),
    ('{"built_images": {"i": {"model": "m", "docker_sha": 5}}}', "field 'docker_sha' must be a string"),
])
def test_load_errors_name_file_entry_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(manifest.ManifestError, match=match):
        manifest.load(path)
    with pytest.raises(manifest.ManifestError, match="does not exist"):
        manifest.load(tmp_path / "none.json")


def test_node_pull_plan_pins_the_digest() -> None:
    pull = _entry().node_pull()
    assert pull is not None
    digest = "sha256:" + "1" * 64
    assert pull.argv() == [["docker", "pull", f"127.0.0.1:5000/ns/ci-m_df@{digest}"],
                           ["docker", "tag", f"127.0.0.1:5000/ns/ci-m_df@{digest}", f"127.0.0.1:5000/ns/ci-m_df:{H}"]]
    lines = pull.script().splitlines()
    assert shlex.split(lines[0])[:3] == ["docker", "pull", f"127.0.0.1:5000/ns/ci-m_df@{digest}"]
    assert _entry(registry_image="").node_pull() is None  # never pushed: only on its build host
    assert NodePull("reg:5000/x:tag", digest).repository == "reg:5000/x"


def test_digest_problem() -> None:
    want = "sha256:" + "1" * 64
    ref = f"127.0.0.1:5000/ns/ci-m_df:{H}"
    attrs = {"Id": "sha256:" + "2" * 64, "RepoDigests": [f"127.0.0.1:5000/ns/ci-m_df@{want}"]}
    assert publish.digest_problem(attrs, ref, want) is None
    assert publish.digest_problem(attrs, "ci-m_df", attrs["Id"]) is None  # never pushed: the image id
    bad = publish.digest_problem(attrs, ref, "sha256:" + "3" * 64)
    assert bad is not None and "digest mismatch" in bad and want in bad


def test_arch_images(tmp_path: Path) -> None:
    from pytest_madengine.context import Context
    from pytest_madengine.executors.docker.plan import BuildPlan, for_arch

    class Spec:
        def __init__(self, ctx: dict[str, Any]) -> None:
            self.context = Context(data=ctx, sources=())

    build = BuildPlan("ci-m_df", "/x/df.Dockerfile", None, "/x", {"A": "1"}, "", "")
    one = for_arch(Spec({}), build, "gfx942")  # type: ignore[arg-type]
    assert (one.image, one.arch, one.build_args) == ("ci-m_df_gfx942", "gfx942",
                                                     {"A": "1", "MAD_SYSTEM_GPU_ARCHITECTURE": "gfx942"})
    pinned = Spec({"docker_build_arg": {"MAD_SYSTEM_GPU_ARCHITECTURE": "gfx90a"}})
    assert for_arch(pinned, build, "gfx942") is build  # type: ignore[arg-type]
    with pytest.raises(ExecutorError, match="--mad-target-archs"):
        for_arch(Spec({}), build, "gfx9;rm")  # type: ignore[arg-type]


def test_build_secrets_sources_and_withheld_args() -> None:
    env = {"MAD_SECRETS_HF": "hf-secret", "MAD_SECRETS_EMPTY": "", "PATH": "/bin"}
    got = buildsecrets.build_secrets(env, "MYCRED", {"MYCRED": {"username": "u", "password": "p4ss", "n": 3}})
    assert got == {"MAD_SECRETS_HF": "hf-secret", "MYCRED_USERNAME": "u", "MYCRED_PASSWORD": "p4ss"}
    text = "ARG BASE_DOCKER\nARG MAD_SECRETS_HF\nARG MAD_SECRETS_URL\narg MYCRED_PASSWORD=x\n"
    assert buildsecrets.withheld(text, got) == ["MAD_SECRETS_HF", "MYCRED_PASSWORD"]
    assert buildsecrets.wants_endpoint(text) and not buildsecrets.wants_endpoint("ARG X\n")


def test_secrets_endpoint_serves_only_with_the_token_and_only_during_the_build() -> None:
    with buildsecrets.endpoint({"MAD_SECRETS_HF": "hf-secret"}) as url:
        assert url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(f"{url}/MAD_SECRETS_HF", timeout=5).read() == b"hf-secret"
        base = url.rsplit("/", 1)[0]
        for bad in (f"{base}/wrongtoken/MAD_SECRETS_HF", f"{url}/OTHER"):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(bad, timeout=5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/MAD_SECRETS_HF", timeout=2)
    assert os.environ.get("MAD_SECRETS_URL") is None


@pytest.mark.parametrize(("args", "message"), [
    (["--mad-build-only", "--mad-manifest=m.json"], "--mad-build-only and --mad-manifest exclude each other"),
    (["--mad-use-image=x", "--mad-manifest=m.json"], "--mad-manifest and --mad-use-image exclude each other"),
    (["--mad-build-jobs=2"], "--mad-build-jobs needs --mad-build-only"),
    (["--mad-build-only", "--mad-build-jobs=-1"], "--mad-build-jobs: -1 is not a number of builds"),
    (["--mad-target-archs=gfx942"], "--mad-target-archs needs --mad-build-only"),
    (["--mad-build-only", "--mad-executor=local"], "need the docker executor, --mad-manifest and --mad-use-image the docker or slurm one; this run uses local"),
    (["--mad-executor=docker", "--mad-manifest=none.json"], "--mad-manifest: */none.json does not exist"),
    (["--mad-executor=docker", "--mad-registry=bad host"], "--mad-registry: 'bad host' is not HOST"),
])
def test_build_option_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-dry-run", *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*{message}*"])


def test_use_image_auto_is_the_cards_docker_image_name() -> None:
    from pytest_madengine.errors import ExecutorError
    from pytest_madengine.executors.docker.manifest import use_image
    assert use_image("reg:5000/x:1", "m", {}) == ("reg:5000/x:1", "--mad-use-image")
    image, source = use_image("auto", "m", {"DOCKER_IMAGE_NAME": "rocm/vllm:latest"})
    assert image == "rocm/vllm:latest" and "auto" in source
    with pytest.raises(ExecutorError, match="model 'm' has no env_vars.DOCKER_IMAGE_NAME.*'env_vars'"):
        use_image("auto", "m", {"OTHER": "1"})
