"""The shapes of madengine's own test fixture (ROCm/madengine ``tests/fixtures/dummy``), run as
a madengine user runs them, on entries of our own in ``tests/data/mad_zoo`` tagged ``madfix``:

* ``scripts/pair/models.json``: a nested file in the form of the fixture's
  ``scripts/dummy2/models.json`` (``../../docker/...``, ``run.sh``), selected by group tag and
  by ``name:key=value``; a ``multiple_results`` script that copies its CSV one folder up as the
  fixture's do, whose CSV madengine leaves in the checkout root;
* ``scripts/gen_local/get_models_json.py``: a generator in the form of ``scripts/dummy3``, its
  Dockerfile prefix ``docker/local`` relative to its own folder, one model from a subclass whose
  ``update_model()`` fills every field;
* madengine's packaged pre/post test scripts (``scripts/common/pre_scripts/pre_test.sh``) named in
  the context of a checkout that does not hold them;
* ``docker/ctxpick.*``: Dockerfiles told apart by madengine's detected ``ctx_test`` key
  (``'None'`` without a ``ctx_test`` file), and ``docker/rocmonly``: a ROCm base image this
  machine cannot get, which fails its own item only.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import DOCKER_BASE

ZOO = Path(__file__).resolve().parents[1] / "data" / "mad_zoo"
PRE_POST = {"pre_scripts": [{"path": "scripts/common/pre_scripts/pre_test.sh", "args": "1"},
                            {"path": "scripts/common/pre_scripts/pre_test.sh", "args": "2"}],
            "post_scripts": [{"path": "scripts/common/post_scripts/post_test.sh"}]}


@pytest.fixture
def zoo(pytester: pytest.Pytester) -> Path:
    shutil.copytree(ZOO, pytester.path, dirs_exist_ok=True)
    return pytester.path


def perf(path: Path) -> list[dict[str, str]]:
    with open(path / "perf.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_fixture_shapes_run_on_the_host(pytester: pytest.Pytester, zoo: Path) -> None:
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-executor=local", "-q", "-rA",
                             "--mad-tags=madfix_group_b,madfix_group_c,pair/second:batch-size=32,pair/rows",
                             f"--mad-context={json.dumps(PRE_POST)}")
    res.assert_outcomes(passed=5)
    rows = perf(zoo)
    # the nested file's names are scoped by folder; the generator's subclass filled its fields
    assert [r["model"] for r in rows] == ["gen_local/third", "gen_local/fourth", "pair/first", "pair/second",
                                          "pair/rows_bs1", "pair/rows_bs2"]
    assert all(r["status"] == "SUCCESS" for r in rows)
    assert {r["model"]: r["args"] for r in rows}["pair/second"] == "--batch-size 32"
    # madengine's packaged pre/post test scripts, in order, around the script
    log = (zoo / "mad_logs/pair/first.log").read_text()
    assert log.index("Pre-Script test called 1") < log.index("Pre-Script test called 2") \
        < log.index("performance: 7.5") < log.index("Post-Script test called 0")
    assert not (zoo / "scripts/common").exists()  # nothing written into the checkout's scripts
    # the host facts madengine's scripts read are always set (empty on a host without GPUs)
    assert "hip=unset" not in log and "product=unset" not in log
    # the multiple_results CSV where madengine leaves it: the checkout root, this run's copy
    copied = (zoo / "perf_pair_rows.csv").read_text().splitlines()
    assert copied[0] == "model,performance,metric,cpus" and copied[1:] == ["bs1,11.5,samples_per_second,0-3",
                                                                           "bs2,20.25,samples_per_second,4"]
    assert {r["model"]: r["cpus"] for r in rows if r["model"].startswith("pair/rows")} == {
        "pair/rows_bs1": "0-3", "pair/rows_bs2": "4"}
    # madengine's perf_entry.csv beside perf.csv: the rows of the model that reported last
    with open(zoo / "perf_entry.csv", newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["pair/rows_bs1", "pair/rows_bs2"]


@pytest.fixture
def docker_zoo(zoo: Path, client: Any) -> Iterator[Path]:
    yield zoo
    for c in client.containers.list(all=True, filters={"label": "org.pytest-madengine.run-id"}, ignore_removed=True):
        if str(zoo) in json.dumps(c.attrs.get("Mounts", [])):
            c.remove(force=True)


@pytest.mark.docker
def test_ctx_test_and_folder_dockerfiles_in_docker(pytester: pytest.Pytester, docker_zoo: Path) -> None:
    zoo = docker_zoo
    context = json.dumps({"gpu_vendor": "AMD", "docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}})
    collected = pytester.runpytest("-p", "no:cacheprovider", "--mad-executor=docker", "--collect-only", "-q",
                                   "--mad-tags=pair/ctxpick", f"--mad-context={context}")
    # madengine's detected ctx_test is 'None' here: one Dockerfile, not both
    assert "scripts/pair/models.json::pair/ctxpick\n" in collected.stdout.str() + "\n"
    assert "ctxpick[" not in collected.stdout.str()
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-executor=docker", "-q", "-rA",
                             "--mad-tags=madfix_docker", f"--mad-context={context}")
    res.assert_outcomes(passed=2, failed=1)
    rows = {r["model"]: r for r in perf(zoo)}
    assert rows["pair/ctxpick"]["performance"] == "0"
    assert rows["pair/ctxpick"]["docker_file"] == "docker/ctxpick.ctxnone.ubuntu.amd.Dockerfile"
    assert rows["gen_local/third"]["docker_file"] == "scripts/gen_local/docker/local.ubuntu.amd.Dockerfile"
    assert "flavour=gen-local" in (zoo / "mad_logs/gen_local/third.log").read_text()
    # the ROCm-only image fails its own item, with a FAILURE row, and says why
    assert rows["pair/rocm_only"]["status"] == "FAILURE"
    res.stdout.fnmatch_lines(["FAILED scripts/pair/models.json::pair/rocm_only - pair/rocm_only: docker buil*"])
    assert "registry.invalid/rocm/pytorch" in res.stdout.str()
    # a ctx_test file in the checkout root picks the other Dockerfile, as madengine's does
    (zoo / "ctx_test").write_text("3\n")
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-executor=docker", "-q",
                             "--mad-tags=pair/ctxpick", f"--mad-context={context}")
    res.assert_outcomes(passed=1)
    assert perf(zoo)[-1]["performance"] == "3"
