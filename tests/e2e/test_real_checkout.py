"""A checkout shaped like today's ROCm/MAD zoo and madengine's own fixture, run as it is.

``tests/data/mad_zoo`` (our own files) has an empty root models.json, per-folder
``scripts/<dir>/models.json``, three same-named ``get_models_json.py`` generators importing
madengine's ``CustomModel`` (a subclass overriding ``update_model()``, same-named helper
modules, a helper from ``scripts/``, a missing submodule), ``.slurm`` and ``.sbatch`` scripts,
a folder model, a Dockerfile prefix with two matching variants, one for another context and a
headerless one, ``additional_docker_run_options``, extra ``multiple_results`` columns and a
``url`` model cloned from a local git repository.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import DOCKER_BASE

pytestmark = [pytest.mark.docker]

ZOO = Path(__file__).resolve().parents[1] / "data" / "mad_zoo"
CONTEXT = json.dumps({"gpu_vendor": "AMD", "ctx_test": "2", "docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}})
ALL_ITEMS = 13  # 12 models, one of them twice (two matching Dockerfiles)


@pytest.fixture
def zoo(pytester: pytest.Pytester, client: Any) -> Iterator[Path]:
    shutil.copytree(ZOO, pytester.path, dirs_exist_ok=True)
    yield pytester.path
    for c in client.containers.list(all=True, filters={"label": "org.pytest-madengine.run-id"}, ignore_removed=True):
        if str(pytester.path) in json.dumps(c.attrs.get("Mounts", [])):
            c.remove(force=True)


def run(pytester: pytest.Pytester, *args: str, context: str = CONTEXT) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "--mad-executor=docker", f"--mad-context={context}", *args)


def perf(path: Path) -> list[dict[str, str]]:
    with open(path / "perf.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_whole_zoo_runs_in_docker(pytester: pytest.Pytester, zoo: Path) -> None:
    res = run(pytester, "--mad-tags=zoo", "-q", "-rA", "--junitxml=junit.xml")
    res.assert_outcomes(passed=ALL_ITEMS)
    out = res.stdout.str()
    assert "Traceback" not in out and "import file mismatch" not in out
    # one item per matching Dockerfile; the headerless one passed over with a warning -q shows
    assert "PASSED scripts/ctxtest/models.json::ctxtest/ctxtest[ctx2a.ubuntu.amd]" in out
    assert "PASSED scripts/ctxtest/models.json::ctxtest/ctxtest[ctx2b.ubuntu.amd]" in out
    assert "MadWarning" in out and "ctxtest.noheader.Dockerfile: no '# CONTEXT' header, passed over" in out
    assert "field 'slurm' and the launcher slurm_multi (dummy_slurm/disagg_slurm) act on the SLURM executor only" in out
    rows = perf(zoo)
    by_file = {r["docker_file"]: r for r in rows if r["model"] == "ctxtest/ctxtest"}
    assert set(by_file) == {"docker/ctxtest.ctx2a.ubuntu.amd.Dockerfile", "docker/ctxtest.ctx2b.ubuntu.amd.Dockerfile"}
    assert "flavour=ctx2a" in (zoo / "mad_logs/ctxtest/ctxtest[ctx2a.ubuntu.amd].log").read_text()
    assert "flavour=ctx2b" in (zoo / "mad_logs/ctxtest/ctxtest[ctx2b.ubuntu.amd].log").read_text()
    # .slurm and .sbatch scripts run with bash, a folder by its run.sh, .py with python3
    status = {r["model"]: r["status"] for r in rows}
    for name in ("dummy_slurm/disagg_slurm", "dummy_slurm/batch_sbatch", "dummy/dummy_folder", "dummy/dummy_py"):
        assert status[name] == "SUCCESS", name
    # generators: the subclass's update_model() ran, each same-named helper module was its own
    assert {r["model"]: r["args"] for r in rows if r["model"].startswith("gen_alpha/")} == {
        "gen_alpha/alpha_small": "--size small", "gen_alpha/alpha_large": "--size large"}
    assert status["gen_beta/beta_fast"] == status["gen_gamma/gamma_2dev"] == "SUCCESS"
    # additional_docker_run_options reached the container (the script checks env and ulimit)
    assert status["runopts/runopts"] == "SUCCESS"
    assert next(r for r in rows if r["model"] == "runopts/runopts")["additional_docker_run_options"].startswith(
        "-e ZOO_OPT=from-card")
    # extra multiple_results columns: in perf.csv and as JUnit properties
    multi = {r["model"]: r for r in rows if r["model"].startswith("dummy/dummy_multi")}
    assert multi["dummy/dummy_multi_dummy_multi_bs16"]["batch_size"] == "16"
    assert multi["dummy/dummy_multi_dummy_multi_bs8"]["latency_ms"] == "12.5"
    assert rows[0].get("batch_size", "") in ("", "8", "16")  # rows without the column keep an empty cell
    props = {p.get("name"): p.get("value") for p in ET.parse(zoo / "junit.xml").iter("property")}
    assert any(k.endswith("batch_size:dummy/dummy_multi_dummy_multi_bs16") and v == "16" for k, v in props.items())
    # madengine's names: live logs in the workspace, containers named container_ci-<model>_<stem>
    run_log = zoo / "dummy_dummy_zoo.ubuntu.amd.run.live.log"
    assert run_log.is_symlink() and "performance: 42.5" in run_log.read_text()
    assert (zoo / "dummy_dummy_zoo.ubuntu.amd.build.live.log").exists()
    assert "container container_ci-dummy_dummy_zoo.ubuntu.amd:" in (zoo / "mad_logs/dummy/dummy.log").read_text()
    # nothing else in the checkout: no run_directory mount point, no __pycache__ from generators
    assert not (zoo / "run_directory").exists()
    assert not list(zoo.glob("scripts/**/__pycache__"))
    # a second run finds the name free again, or takes a suffix when a kept container holds it
    res = run(pytester, "--mad-tags=dummy/dummy", "--mad-keep-alive")
    res.assert_outcomes(passed=1)
    res = run(pytester, "--mad-tags=dummy/dummy")
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy/dummy.log").read_text()
    assert "container name container_ci-dummy_dummy_zoo.ubuntu.amd is held by another container; using " \
           "container_ci-dummy_dummy_zoo.ubuntu.amd_2" in log


@pytest.mark.parametrize("mode", ["--collect-only", "--setup-plan", "--setup-only"])
def test_runs_that_run_nothing_write_nothing(pytester: pytest.Pytester, zoo: Path, mode: str) -> None:
    res = run(pytester, "--mad-tags=zoo", mode)
    assert res.ret == 0
    assert "failed" not in res.stdout.str().splitlines()[-1]
    assert not (zoo / "perf.csv").exists()


@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_mistyped_tag_is_a_usage_error_and_writes_nothing(pytester: pytest.Pytester, zoo: Path,
                                                            extra: list[str]) -> None:
    res = run(pytester, "--mad-tags=zooo", *extra)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "'zooo' matches no model name or tag; closest: zoo" in res.stderr.str()
    assert not (zoo / "perf.csv").exists() and "INTERNALERROR" not in res.stdout.str()


def test_generators_are_never_imported_by_pytests_python_collector(pytester: pytest.Pytester, zoo: Path) -> None:
    # even when python_files would take them and the generators are named as arguments
    (zoo / "pytest.ini").write_text("[pytest]\npython_files = *.py\n")
    gens = sorted(str(p) for p in zoo.glob("scripts/*/get_models_json.py"))
    res = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--mad-executor=local",
                             f"--mad-context={CONTEXT}", *gens)
    assert res.ret == 0, res.stdout.str()
    assert "gen_alpha/alpha_small" in res.stdout.str() and "errors" not in res.stdout.str()


def test_generators_use_an_installed_madengine(pytester: pytest.Pytester, zoo: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "madengine" / "utils"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "discover_models.py").write_text(textwrap.dedent("""
        from dataclasses import asdict, dataclass, field

        @dataclass
        class CustomModel:
            name: str
            dockerfile: str = ""
            dockercontext: str = ""
            scripts: str = ""
            url: str = ""
            cred: str = ""
            owner: str = ""
            data: str = ""
            n_gpus: str = "-1"
            timeout: int = 7200
            training_precision: str = ""
            tags: list = field(default_factory=list)
            args: str = ""
            multiple_results: str = ""
            skip_gpu_arch: str = ""
            installed: str = "yes"

            def to_dict(self):
                return asdict(self)

            def update_model(self):
                pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    res = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--mad-executor=local",
                             "--mad-tags=generated")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["*gen_alpha/alpha_small", "*gen_beta/beta_fast", "*gen_gamma/gamma_2dev"])


def test_a_collection_error_says_so(pytester: pytest.Pytester, zoo: Path) -> None:
    (zoo / "test_broken.py").write_text("raise RuntimeError('broken on import')\n")
    res = run(pytester, "--mad-tags=dummy/dummy", "test_broken.py", "--mad-executor=local")
    assert res.ret == pytest.ExitCode.INTERRUPTED
    [row] = perf(zoo)
    assert row["status"] == "FAILURE"
    out = res.stdout.str()
    assert "not run: collection failed: test_broken.py" in out and "Ctrl-C" not in out


def test_paths_outside_the_checkout_are_refused(pytester: pytest.Pytester, zoo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host file\n")
    (zoo / "scripts/dummy/leak").symlink_to(outside / "secret.txt")
    (zoo / "scripts/dummy/inside").symlink_to(zoo / "scripts/zoo_common.py")
    bad = [
        {"name": "escape", "dockerfile": "../../docker/zoo", "scripts": "../../../../etc/passwd"},
        {"name": "outdir", "dockerfile": "../../docker/zoo", "scripts": "../../.."},
        {"name": "outdocker", "dockerfile": "../../../../docker/zoo", "scripts": "run.sh"},
        {"name": "txt", "dockerfile": "../../docker/zoo", "scripts": "notes.txt"},
        {"name": "badopt", "dockerfile": "../../docker/zoo", "scripts": "run.sh",
         "additional_docker_run_options": "--frobnicate 3"},
    ]
    (zoo / "scripts/bad").mkdir()
    (zoo / "scripts/bad/notes.txt").write_text("x\n")
    (zoo / "scripts/bad/run.sh").write_text("echo 'performance: 1 x'\n")
    (zoo / "scripts/bad/models.json").write_text(json.dumps(bad))
    res = run(pytester, "--mad-tags=bad/all,dummy/dummy", "--mad-executor=local")
    res.assert_outcomes(failed=5, passed=1)
    out = res.stdout.str()
    assert "Traceback" not in out
    assert "field 'scripts' '../../../../etc/passwd' leads outside" in out
    assert "field 'scripts' '../../..' leads outside" in out
    assert "field 'dockerfile' '../../../../docker/zoo' leads outside" in out
    assert "field 'scripts' 'notes.txt' is a file; madengine runs .sh, .slurm and .sbatch" in out
    assert "additional_docker_run_options: unsupported flag '--frobnicate'" in out
    run_dir = zoo / "mad_work/dummy__dummy"
    assert not (run_dir / "leak").exists() and (run_dir / "inside").read_text().startswith('"""Shared')
    assert "left out leak: a symlink to" in (zoo / "mad_logs/dummy/dummy.log").read_text()


def test_a_model_from_a_git_url_is_cloned(pytester: pytest.Pytester, zoo: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "upstream" / "model-code"
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "upstream.txt").write_text("from upstream\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (zoo / "scripts/gen_gamma/run.sh").write_text(
        "#!/bin/bash\ncat upstream.txt || exit 3\necho 'performance: 5.5 samples_per_second'\n")
    monkeypatch.setenv("ZOO_GIT_URL", f"file://{repo}")
    res = run(pytester, "--mad-tags=url_models")
    res.assert_outcomes(passed=1)
    [row] = perf(zoo)
    assert row["model"] == "gen_gamma/gamma_url" and row["git_commit"] == head
    assert "from upstream" in (zoo / "mad_logs/gen_gamma/gamma_url.log").read_text()


def test_a_mirror_path_reaches_the_container_normalised(pytester: pytest.Pytester, zoo: Path) -> None:
    data = zoo / "data"
    data.mkdir()
    (data / "x.bin").write_text("1")
    (zoo / "scripts/dummy/run.sh").write_text(
        '#!/bin/bash\ngrep -q " $MAD_DATAHOME " /proc/self/mountinfo || { echo "no mount $MAD_DATAHOME"; exit 3; }\n'
        'echo "home=$MAD_DATAHOME"\necho "performance: 1 x"\n')
    res = run(pytester, "--mad-tags=dummy/dummy", "--mad-force-mirror-local=scripts/../data")
    res.assert_outcomes(passed=1)
    assert f"home={data}" in (zoo / "mad_logs/dummy/dummy.log").read_text()


def test_context_warnings_show_in_quiet_mode(pytester: pytest.Pytester, zoo: Path) -> None:
    ctx = json.dumps({"gpu_vendor": "AMD", "debug": True, "nosuchkey": 1})
    res = pytester.runpytest("-p", "no:cacheprovider", "-q", "--collect-only", "--mad-executor=local",
                             f"--mad-context={ctx}", "--mad-tags=dummy/dummy")
    out = res.stdout.str()
    assert "MadWarning: context key 'debug'" in out and "MadWarning: unknown context key 'nosuchkey'" in out
    assert os.path.exists(zoo / "models.json")
