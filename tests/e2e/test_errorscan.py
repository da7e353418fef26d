"""The log error scan end to end (local backend): madengine's default patterns fail a model
whose output has an error and a performance line; benign lines and the off switch."""

from __future__ import annotations

import csv
import json

import pytest

from .conftest import ModelRepo

OOM = """
    #!/usr/bin/env bash
    echo "step 1"
    echo "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    echo "performance: 99 samples_per_second"
"""


def rows(pytester: pytest.Pytester) -> dict[str, dict[str, str]]:
    with open(pytester.path / "perf.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def test_an_error_line_fails_a_model_that_printed_a_number(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("oom", OOM)
    repo.model("benign", OOM, log_error_benign_patterns=["Tried to allocate"])
    repo.model("off", OOM, log_error_pattern_scan=False)
    repo.model("own", 'echo "fatal: BOOM"\necho "performance: 1 x"\n', log_error_patterns=["BOOM"])
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local")
    res.assert_outcomes(passed=2, failed=2)
    res.stdout.fnmatch_lines(["*oom: error pattern 'RuntimeError:' at line 2: RuntimeError: CUDA out of memory*",
                              "*own: error pattern 'BOOM' at line 1: fatal: BOOM*"])
    got = rows(pytester)
    assert (got["oom"]["status"], got["benign"]["status"], got["off"]["status"]) == ("FAILURE", "SUCCESS", "SUCCESS")
    assert "[pytest-madengine]" not in res.stdout.str().split("error pattern")[1].splitlines()[0]  # not our lines


def test_the_context_turns_the_scan_off(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("oom", OOM)
    ctx = json.dumps({"log_error_pattern_scan": False})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", f"--mad-context={ctx}")
    res.assert_outcomes(passed=1)
    assert "MadWarning" not in res.stdout.str()  # a key we act on now


def test_a_bad_setting_fails_the_model_naming_the_key(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("bad", OOM, log_error_patterns=[3])
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*model card field 'log_error_patterns' must be a list of strings*"])
