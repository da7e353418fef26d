"""Path and process safety: names, tags and headers that try to reach outside are refused or
inert (reliability issue, point 6); symlinks are covered by test_real_checkout.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import PERF_OK, ModelRepo


def test_a_model_named_like_a_path_stays_in_our_folders(pytester: pytest.Pytester, repo: ModelRepo,
                                                        tmp_path: Path) -> None:
    repo.model("../../escape", PERF_OK, script="scripts/esc/run.sh")
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local")
    res.assert_outcomes(passed=1)
    assert (pytester.path / "mad_work" / "escape").is_dir()
    assert (pytester.path / "mad_logs" / "escape.log").is_file()
    assert not (pytester.path.parent / "escape").exists() and not (pytester.path.parent / "escape.log").exists()


def test_a_tag_with_shell_metacharacters_is_inert(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    marker = pytester.path / "pwned"
    repo.model("m", 'echo "args: $*"\necho "performance: 1 x"\n')
    res = pytester.runpytest("-p", "no:cacheprovider", f"--mad-tags=m:x=$(touch {marker});touch {marker}",
                             "--mad-executor=local")
    res.assert_outcomes(passed=1)
    assert not marker.exists()
    assert f"args: --x $(touch {marker});touch {marker}" in (pytester.path / "mad_logs/m.log").read_text()


def test_yaml_context_tags_that_build_objects_are_refused(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("m", PERF_OK)
    (pytester.path / "ctx.yaml").write_text("docker_env_vars: !!python/object/apply:os.system ['touch pwned']\n")
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=m", "--mad-executor=local",
                             "--mad-context-file=ctx.yaml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert not (pytester.path / "pwned").exists() and not (pytester.path / "perf.csv").exists()


def test_a_dockerfile_header_with_code_is_refused_not_run(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    (pytester.path / "docker").mkdir()
    (pytester.path / "docker/evil.Dockerfile").write_text(
        "# CONTEXT {'gpu_vendor': __import__('os').system('touch pwned')}\nFROM scratch\n")
    repo.model("m", PERF_OK, dockerfile="docker/evil")
    # a dry run on the Docker backend reads the header (to pick the Dockerfile) and connects to nothing
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=m", "--mad-executor=docker", "--mad-dry-run",
                             f"--mad-context={json.dumps({'gpu_vendor': 'AMD'})}")
    assert not (pytester.path / "pwned").exists()
    res.stdout.fnmatch_lines(["*evil.Dockerfile: the '# CONTEXT' header is not a JSON object or Python dict literal*"])
