"""Pure pieces found missing by running madengine's own test fixture (tests/fixtures/dummy of
ROCm/madengine) through the plugin: the detected ``ctx_test`` key, the host facts scripts read
(``MAD_SYSTEM_HIP_VERSION``, ``MAD_SYSTEM_GPU_PRODUCT_NAME``), stand-ins for madengine's
packaged ``scripts/common`` pre/post scripts, the ``multiple_results`` copy in the checkout and
madengine's ``perf_entry.csv``."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from pytest_madengine import context as ctx_mod
from pytest_madengine.context import Context
from pytest_madengine.errors import UsageError
from pytest_madengine.executors.docker import dockerfiles
from pytest_madengine.gpus import devices
from pytest_madengine.models import Model
from pytest_madengine.results import report
from pytest_madengine.session import script_env
from pytest_madengine.workspace import around, livelogs

# ------------------------------------------------------------------ ctx_test, as madengine detects it


def test_ctx_test_is_none_without_a_file(tmp_path: Path) -> None:
    ctx = ctx_mod.with_detected(Context({"gpu_vendor": "AMD"}), tmp_path)
    assert ctx["ctx_test"] == "None" and ctx["gpu_vendor"] == "AMD"


def test_ctx_test_comes_from_the_file_in_the_checkout_root(tmp_path: Path) -> None:
    (tmp_path / "ctx_test").write_text("2\n")
    assert ctx_mod.with_detected(Context({}), tmp_path)["ctx_test"] == "2"


def test_a_given_ctx_test_wins_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "ctx_test").write_text("2\n")
    ctx = Context({"ctx_test": "1"}, sources=("--mad-context",))
    assert ctx_mod.with_detected(ctx, tmp_path) is ctx


def test_ctx_test_is_a_known_context_key() -> None:
    assert ctx_mod.validate({"ctx_test": "1"}) == []


def _headers(folder: Path) -> Path:
    (folder / "docker").mkdir()
    for label, value in (("ctx0", "None"), ("ctx1", "1"), ("ctx2a", "2"), ("ctx2b", "2")):
        (folder / "docker" / f"pick.{label}.ubuntu.amd.Dockerfile").write_text(
            f"# CONTEXT {{'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU', 'ctx_test': '{value}'}}\nFROM x\n")
    return folder / "docker" / "pick"


@pytest.mark.parametrize("file_text, given, picked", [
    (None, {}, ["pick.ctx0.ubuntu.amd.Dockerfile"]),  # madengine: ctx_test 'None'
    ("1\n", {}, ["pick.ctx1.ubuntu.amd.Dockerfile"]),
    ("2\n", {"ctx_test": "1"}, ["pick.ctx1.ubuntu.amd.Dockerfile"]),  # the context beats the file
    (None, {"ctx_test": "2"}, ["pick.ctx2a.ubuntu.amd.Dockerfile", "pick.ctx2b.ubuntu.amd.Dockerfile"]),
])
def test_the_detected_ctx_test_picks_dockerfiles_as_madengine(tmp_path: Path, file_text: str | None,
                                                             given: dict[str, str], picked: list[str]) -> None:
    prefix = _headers(tmp_path)
    if file_text is not None:
        (tmp_path / "ctx_test").write_text(file_text)
    ctx = ctx_mod.with_detected(Context({"guest_os": "UBUNTU", **given}), tmp_path)
    chosen = dockerfiles.matching(prefix, ctx, "AMD").chosen
    assert sorted(c.path.name for c in chosen) == picked


# ------------------------------------------------------------------ host facts scripts read


@pytest.mark.parametrize("hipconfig, info, expected", [
    ("6.2.41133-dd7f95766", "", "6.2"),
    ("", "6.4.1-84\n", "6.4"),  # no hipconfig: the ROCm install's .info/version
    ("HIP version: 7.0.51830-a3e329ad8\n", "6.4.1", "7.0"),
    ("", "", ""),
])
def test_hip_version(hipconfig: str, info: str, expected: str) -> None:
    assert devices.amd_hip_version(hipconfig, info) == expected


@pytest.mark.parametrize("nvcc, smi, expected", [
    ("nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.4, V12.4.131\n", "", "12.4"),
    ("", "| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |", "12.4"),
    ("", "", ""),
])
def test_cuda_version(nvcc: str, smi: str, expected: str) -> None:
    assert devices.cuda_version(nvcc, smi) == expected


@pytest.mark.parametrize("amd_smi, rocm_smi, expected", [
    ("GPU: 0\n    ASIC:\n        MARKET_NAME: AMD Instinct MI300X\n        VENDOR_ID: 0x1002\nGPU: 1\n"
     "    ASIC:\n        MARKET_NAME: AMD Instinct MI300X\n", "", "AMD Instinct MI300X"),
    ("    MARKET_NAME: N/A\n", "GPU[0]\t\t: Card Series: \t\tAMD Instinct MI210\n", "AMD Instinct MI210"),
    ("", "GPU[0]          : Card model:           0x740f\n", "0x740f"),
    ("", "", ""),
])
def test_product_name(amd_smi: str, rocm_smi: str, expected: str) -> None:
    assert devices.amd_product_name(amd_smi, rocm_smi) == expected


def test_scripts_get_the_host_facts_even_when_unknown() -> None:
    m = Model(name="dummy_gpubind", source=Path("models.json"), index=0, base_dir=Path("."), scope=None,
              dockerfile="docker/dummy", scripts="scripts/dummy/run_gpu_bind.sh", n_gpus=1, tags=("t",))
    env = script_env(m, Context({}), vendor="AMD", arch="gfx942", system_ngpus=8, gpus=(0,), runtime_ngpus=1,
                     use_devices=True, deployment="docker", hip_version="6.2", product="AMD Instinct MI300X")
    assert env["MAD_SYSTEM_HIP_VERSION"] == "6.2" and env["MAD_SYSTEM_GPU_PRODUCT_NAME"] == "AMD Instinct MI300X"
    bare = script_env(m, Context({}), vendor="NONE", arch="", system_ngpus=0, gpus=(), runtime_ngpus=0,
                      use_devices=False, deployment="local")
    # set and empty, as MAD_SYSTEM_GPU_ARCHITECTURE is on a host without GPUs: `set -u` scripts still run
    assert bare["MAD_SYSTEM_HIP_VERSION"] == "" and bare["MAD_SYSTEM_GPU_PRODUCT_NAME"] == ""


# ------------------------------------------------------------------ madengine's packaged scripts/common


def test_packaged_pre_and_post_test_scripts_stand_in(tmp_path: Path) -> None:
    ctx = {"pre_scripts": [{"path": "scripts/common/pre_scripts/pre_test.sh", "args": "1"}],
           "post_scripts": [{"path": "./scripts/common/post_scripts/post_test.sh"}]}
    pre, post = around.steps(ctx, tmp_path)
    assert pre.name == "pre_test.sh" and pre.source.parent == around.TOOLDATA and pre.args == ("1",)
    assert post.name == "post_test.sh" and post.source.is_file()
    assert "Pre-Script test called ${1:-0}" in pre.source.read_text()


def test_the_checkouts_own_common_script_wins(tmp_path: Path) -> None:
    own = tmp_path / "scripts/common/pre_scripts/pre_test.sh"
    own.parent.mkdir(parents=True)
    own.write_text("echo mine\n")
    (step,) = around.steps({"pre_scripts": [{"path": "scripts/common/pre_scripts/pre_test.sh"}]}, tmp_path)
    assert step.source == own.resolve() and step.name == "pre_test.sh"


def test_other_missing_common_scripts_are_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"context key 'pre_scripts' entry 0: .*gpu_info_pre.sh is not a file"):
        around.steps({"pre_scripts": [{"path": "scripts/common/pre_scripts/gpu_info_pre.sh"}]}, tmp_path)


# ------------------------------------------------------------------ the multiple_results CSV in the checkout


@pytest.mark.parametrize("value, name", [
    ("perf_dummy.csv", "perf_dummy.csv"),
    ("results/out.csv", "out.csv"),
    ("perf.csv", None),  # would replace the run's perf.csv
    ("perf_entry.csv", None),
    ("results.txt", None),
    (".hidden.csv", None),
])
def test_results_copy_name(value: str, name: str | None) -> None:
    assert livelogs.results_copy_name(value) == name


def test_copy_result_replaces_a_file_never_a_link_or_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "mad_work" / "m"
    run_dir.mkdir(parents=True)
    src = run_dir / "perf_dummy.csv"
    src.write_text("model,performance,metric\na,1,x\n")
    (tmp_path / "perf_dummy.csv").write_text("old\n")
    assert livelogs.copy_result(tmp_path, "perf_dummy.csv", src) == tmp_path / "perf_dummy.csv"
    assert (tmp_path / "perf_dummy.csv").read_text() == src.read_text()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    (tmp_path / "elsewhere.csv").write_text("keep\n")
    os.symlink(tmp_path / "elsewhere.csv", tmp_path / "linked.csv")
    (tmp_path / "folder.csv").mkdir()
    for name in ("linked.csv", "folder.csv"):
        (run_dir / name).write_text("new\n")
        assert livelogs.copy_result(tmp_path, name, run_dir / name) is None
    assert (tmp_path / "elsewhere.csv").read_text() == "keep\n"
    assert livelogs.copy_result(tmp_path, "absent.csv", run_dir / "absent.csv") is None


# ------------------------------------------------------------------ perf_entry.csv


def test_perf_entry_holds_the_latest_models_rows(tmp_path: Path) -> None:
    entry = tmp_path / report.PERF_ENTRY
    report.write_perf_entry(entry, [{"model": "dummy", "performance": "1", "status": "SUCCESS"}])
    report.write_perf_entry(entry, [{"model": "dummy_multi_1", "performance": "2", "temperature": "30"},
                                    {"model": "dummy_multi_2", "performance": "3", "temperature": "31"}])
    with open(entry, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["dummy_multi_1", "dummy_multi_2"]  # replaced, as madengine does
    header = entry.read_text().splitlines()[0].split(",")
    assert header[: len(report.PERF_COLUMNS)] == list(report.PERF_COLUMNS) and header[-1] == "temperature"
    report.write_perf_entry(entry, [])  # a model without rows leaves the file as it is
    assert len(entry.read_text().splitlines()) == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
