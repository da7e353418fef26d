"""Unit tests for pytest_madengine.dockerfiles: candidates, CONTEXT headers, selection, names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.errors import DockerfileError
from pytest_madengine.executors.docker import dockerfiles


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


AMD = "# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}\nFROM x\n"
NVIDIA = "# CONTEXT {'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}\nFROM x\n"


# ------------------------------------------------------------------ headers


@pytest.mark.parametrize("text, expected", [
    ("# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}\nFROM x\n", {"gpu_vendor": "AMD", "guest_os": "UBUNTU"}),
    ('# CONTEXT {"gpu_vendor": "NVIDIA"}\n', {"gpu_vendor": "NVIDIA"}),
    ("#CONTEXT {'guest_os': 'CENTOS'}\n", {"guest_os": "CENTOS"}),
    ("ARG X\n# a comment\n# CONTEXT {'gpu_vendor': 'AMD'}\n", {"gpu_vendor": "AMD"}),
    ("# CONTEXT {}\n", {}),
    ("FROM x\n", None),
    ("", None),
])
def test_parse_header(text: str, expected: dict | None) -> None:
    assert dockerfiles.parse_header(text) == expected


def test_header_after_the_fifth_line_is_not_read() -> None:
    # madengine: `head -n5 | grep '# CONTEXT '`
    text = "\n".join(["# line"] * 5) + "\n# CONTEXT {'gpu_vendor': 'AMD'}\n"
    assert dockerfiles.parse_header(text) is None


@pytest.mark.parametrize("body", ["{'a': __import__('os').system('true')}", "{'a': }", "{1: 2"])
def test_header_is_never_evaluated(body: str) -> None:
    with pytest.raises(DockerfileError, match="not a JSON object or Python dict literal"):
        dockerfiles.parse_header(f"# CONTEXT {body}\n", "x.Dockerfile")


def test_header_must_be_a_dict() -> None:
    with pytest.raises(DockerfileError, match="must be a dict, got set"):
        dockerfiles.parse_header("# CONTEXT {'AMD'}\n")


# ------------------------------------------------------------------ candidates


def test_candidates_are_prefix_dot_something_dot_dockerfile(tmp_path: Path) -> None:
    write(tmp_path, "docker/dummy.ubuntu.amd.Dockerfile", AMD)
    write(tmp_path, "docker/dummy.ubuntu.nvidia.Dockerfile", NVIDIA)
    write(tmp_path, "docker/dummy.Dockerfile", "FROM x\n")
    write(tmp_path, "docker/dummy_other.ubuntu.amd.Dockerfile", AMD)  # another prefix
    write(tmp_path, "docker/dummy.ubuntu.amd.Dockerfile.bak", AMD)  # not a Dockerfile
    write(tmp_path, "docker/dummy.README", "x")
    names = [p.name for p in dockerfiles.candidate_paths(tmp_path / "docker/dummy")]
    assert names == ["dummy.Dockerfile", "dummy.ubuntu.amd.Dockerfile", "dummy.ubuntu.nvidia.Dockerfile"]


def test_the_prefix_itself_when_it_is_a_file(tmp_path: Path) -> None:
    write(tmp_path, "docker/Dockerfile", "FROM x\n")
    assert dockerfiles.candidate_paths(tmp_path / "docker/Dockerfile") == [tmp_path / "docker/Dockerfile"]


def test_no_folder_no_candidates(tmp_path: Path) -> None:
    assert dockerfiles.candidate_paths(tmp_path / "missing/dummy") == []


# ------------------------------------------------------------------ selection


def test_selects_by_gpu_vendor_of_the_run(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ubuntu.amd.Dockerfile", AMD)
    write(tmp_path, "docker/d.ubuntu.nvidia.Dockerfile", NVIDIA)
    ctx = {"guest_os": "UBUNTU"}
    assert dockerfiles.select(tmp_path / "docker/d", ctx, "AMD").path.name == "d.ubuntu.amd.Dockerfile"
    assert dockerfiles.select(tmp_path / "docker/d", ctx, "NVIDIA").path.name == "d.ubuntu.nvidia.Dockerfile"


def test_context_gpu_vendor_wins_over_the_detected_one(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ubuntu.amd.Dockerfile", AMD)
    write(tmp_path, "docker/d.ubuntu.nvidia.Dockerfile", NVIDIA)
    chosen = dockerfiles.select(tmp_path / "docker/d", {"gpu_vendor": "NVIDIA", "guest_os": "UBUNTU"}, "AMD")
    assert chosen.path.name == "d.ubuntu.nvidia.Dockerfile"


def test_comparison_is_case_insensitive(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ubuntu.amd.Dockerfile", AMD)
    assert dockerfiles.select(tmp_path / "docker/d", {"guest_os": "ubuntu"}, "amd").header == {
        "gpu_vendor": "AMD", "guest_os": "UBUNTU"}


def test_a_file_without_header_matches_anything(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.any.Dockerfile", "FROM x\n")
    assert dockerfiles.select(tmp_path / "docker/d", {"guest_os": "CENTOS"}, "NONE").header is None


def test_header_keys_the_context_lacks_do_not_constrain(tmp_path: Path) -> None:
    # madengine's Context.filter: only keys present in the run context are compared.
    write(tmp_path, "docker/d.x.Dockerfile", "# CONTEXT {'MAD_SYSTEM_GPU_ARCHITECTURE': 'gfx942'}\n")
    assert dockerfiles.select(tmp_path / "docker/d", {"guest_os": "UBUNTU"}, "AMD").path.name == "d.x.Dockerfile"


def test_no_match_lists_candidates_headers_and_context(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ubuntu.amd.Dockerfile", AMD)
    write(tmp_path, "docker/d.ubuntu.nvidia.Dockerfile", NVIDIA)
    with pytest.raises(DockerfileError) as info:
        dockerfiles.select(tmp_path / "docker/d", {"guest_os": "UBUNTU"}, "NONE", model="m1")
    msg = str(info.value)
    assert msg.startswith("model 'm1': no Dockerfile matches the run context")
    assert "gpu_vendor='NONE'" in msg and "guest_os='UBUNTU'" in msg
    assert "d.ubuntu.amd.Dockerfile {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}" in msg
    assert "d.ubuntu.nvidia.Dockerfile {'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}" in msg
    assert "--mad-context" in msg


def test_select_without_a_pin_refuses_several_matches(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ubuntu.amd.Dockerfile", AMD)
    write(tmp_path, "docker/d.v2.ubuntu.amd.Dockerfile", AMD)
    with pytest.raises(DockerfileError, match=r"2 Dockerfiles match the run context .*d\.v2\.ubuntu\.amd"):
        dockerfiles.select(tmp_path / "docker/d", {"guest_os": "UBUNTU"}, "AMD")


def test_every_matching_dockerfile_is_chosen_and_headerless_ones_pass_over(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.ctx2a.ubuntu.amd.Dockerfile", "# CONTEXT {'gpu_vendor': 'AMD', 'ctx_test': '2'}\n")
    write(tmp_path, "docker/d.ctx2b.ubuntu.amd.Dockerfile", "#CONTEXT {\"ctx_test\": \"2\"}\n")
    write(tmp_path, "docker/d.ctx1.ubuntu.amd.Dockerfile", "# CONTEXT {'ctx_test': '1'}\n")
    write(tmp_path, "docker/d.any.Dockerfile", "FROM x\n")
    m = dockerfiles.matching(tmp_path / "docker/d", {"ctx_test": 2}, "AMD")
    assert [c.path.name for c in m.chosen] == ["d.ctx2a.ubuntu.amd.Dockerfile", "d.ctx2b.ubuntu.amd.Dockerfile"]
    assert [c.path.name for c in m.passed_over] == ["d.any.Dockerfile"]
    labels = [dockerfiles.variant_label(tmp_path / "docker/d", c.path) for c in m.chosen]
    assert labels == ["ctx2a.ubuntu.amd", "ctx2b.ubuntu.amd"]
    assert dockerfiles.dockerfile_stem(m.chosen[0].path) == "d.ctx2a.ubuntu.amd"


def test_a_sole_headerless_dockerfile_is_used(tmp_path: Path) -> None:
    write(tmp_path, "docker/plain.Dockerfile", "FROM x\n")
    m = dockerfiles.matching(tmp_path / "docker/plain", {"gpu_vendor": "AMD"}, "AMD")
    assert [c.path.name for c in m.chosen] == ["plain.Dockerfile"] and not m.passed_over
    assert dockerfiles.variant_label(tmp_path / "docker/plain", m.chosen[0].path) == "plain"


def test_no_candidate_at_all(tmp_path: Path) -> None:
    with pytest.raises(DockerfileError, match=r"no Dockerfile for prefix .*docker/d \(looked for"):
        dockerfiles.select(tmp_path / "docker/d", {}, "AMD")


def test_a_bad_header_names_its_file(tmp_path: Path) -> None:
    write(tmp_path, "docker/d.x.Dockerfile", "# CONTEXT {'gpu_vendor': \n")
    with pytest.raises(DockerfileError, match=r"d\.x\.Dockerfile: the '# CONTEXT' header"):
        dockerfiles.select(tmp_path / "docker/d", {}, "AMD")


# ------------------------------------------------------------------ base image, image name


@pytest.mark.parametrize("text, args, expected", [
    ("ARG BASE_DOCKER=rocm/pytorch:latest\nFROM $BASE_DOCKER\n", {}, "rocm/pytorch:latest"),
    ("ARG BASE_DOCKER=rocm/pytorch:latest\nFROM $BASE_DOCKER\n", {"BASE_DOCKER": "reg.io:5000/x:1"}, "reg.io:5000/x:1"),
    ('ARG BASE_DOCKER="quoted/img:1"\nFROM ${BASE_DOCKER}\n', {}, "quoted/img:1"),
    ("# CONTEXT {}\nFROM ubuntu:22.04 AS build\nFROM scratch\n", {}, "ubuntu:22.04"),
    ("FROM --platform=linux/amd64 debian:12\n", {}, "debian:12"),
    ("ARG X\nFROM ${X}\n", {}, ""),
    ("# ARG BASE_DOCKER=commented/out\nFROM a/b\n", {}, "a/b"),
])
def test_base_image(text: str, args: dict, expected: str) -> None:
    assert dockerfiles.base_image(text, args) == expected


def test_arg_defaults_join_continuations() -> None:
    assert dockerfiles.arg_defaults("ARG A=1\nARG B\nARG C=x \\\n  \nARG A=2\n") == {"A": "1", "C": "x"}


@pytest.mark.parametrize("model, dockerfile, expected", [
    ("dummy", "docker/dummy.ubuntu.amd.Dockerfile", "ci-dummy_dummy.ubuntu.amd"),
    ("pyt_vllm/Llama-3.1-8B", "docker/pyt_vllm.ubuntu.amd.Dockerfile", "ci-pyt_vllm_llama-3.1-8b_pyt_vllm.ubuntu.amd"),
    ("a b+c", "docker/x.Dockerfile", "ci-a_b_c_x"),
    ("weird._name", "docker/x.Dockerfile", "ci-weird_name_x"),
    ("trailing.", "docker/Dockerfile", "ci-trailing_dockerfile"),
])
def test_image_name(model: str, dockerfile: str, expected: str) -> None:
    from docker.utils.build import match_tag

    name = dockerfiles.image_name(model, Path(dockerfile))
    assert name == expected
    assert match_tag(name) and match_tag(name + ":latest")


def test_long_image_names_stay_valid_and_distinct() -> None:
    from docker.utils.build import match_tag

    a = dockerfiles.image_name("m" * 300 + "a", Path("docker/x.Dockerfile"))
    b = dockerfiles.image_name("m" * 300 + "b", Path("docker/x.Dockerfile"))
    assert a != b and len(a) <= 200 and match_tag(a)
