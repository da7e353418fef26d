"""slurm_args: parsing and validation (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.executors.slurm.args import (
    DEFAULT_QUEUE_TIMEOUT_S,
    SlurmArgs,
    check_partition,
    model_name_from_args,
    parse,
    time_to_seconds,
)

BASE = {"PARTITION": "debug", "TIME": "00:30:00"}


def args(**kw: object) -> SlurmArgs:
    return parse({**BASE, **kw})


def test_minimal_and_defaults() -> None:
    a = parse(BASE)
    assert (a.partition, a.time, a.time_s, a.nodes, a.framework, a.docker_image) == ("debug", "00:30:00", 1800, 1, "", "")
    assert a.gpus_per_node is None and a.extra_sbatch == () and a.queue_timeout == DEFAULT_QUEUE_TIMEOUT_S
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.partition = "x"  # type: ignore[misc]


def test_seed_keys_of_a_disaggregated_framework() -> None:
    a = args(FRAMEWORK="sglang_disagg", PREFILL_NODES="2", DECODE_NODES=2, DOCKER_IMAGE="rocm/sgl-dev:v0.4")
    assert (a.prefill_nodes, a.decode_nodes, a.nodes) == (2, 2, 4)
    env = a.framework_env("Qwen3-32B")
    assert env["MODEL_NAME"] == "Qwen3-32B" and env["PREFILL_NODES"] == "2" and env["NODES"] == "4"
    assert env["DOCKER_IMAGE"] == "rocm/sgl-dev:v0.4" and env["PARTITION"] == "debug" and env["TIME"] == "00:30:00"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), (30, 1800), ("5:30", 330), ("01:02:03", 3723), ("2-0", 172800), ("1-02", 93600),
    ("1-02:30", 95400), ("1-02:30:15", 95415), ("100:00:00", 360000),
])
def test_time_formats_slurm_accepts(text: object, seconds: int) -> None:
    assert time_to_seconds(text)[1] == seconds


@pytest.mark.parametrize(("text", "why"), [
    ("0", "no time at all"), ("1:75", "seconds must be below 60"), ("1:61:00", "minutes must be below 60"),
    ("1-24", "hours must be below 24"), ("1h", "not a SLURM time"), ("", "is required"),
    ("1:2:3:4", "not a SLURM time"), ("-5", "not a SLURM time"), (1.5, "must be a string"), (True, "must be a string"),
])
def test_bad_times_name_the_key(text: object, why: str) -> None:
    with pytest.raises(UsageError, match=f"slurm_args TIME: .*{why}"):
        args(TIME=text)


@pytest.mark.parametrize("key", ["PARTITION", "TIME"])
def test_required_keys(key: str) -> None:
    with pytest.raises(UsageError, match=f"slurm_args {key}: is required"):
        parse({k: v for k, v in BASE.items() if k != key})


@pytest.mark.parametrize(("key", "value", "why"), [
    ("NODES", 0, "positive integer"), ("NODES", "two", "must be an integer"), ("NODES", -1, "positive"),
    ("NODES", True, "must be an integer"), ("GPUS_PER_NODE", -1, ">= 0"), ("QUEUE_TIMEOUT", 0, "positive"),
    ("QUEUE_TIMEOUT", "soon", "number of seconds"), ("SUBMIT_AHEAD", -2, ">= 0"),
    ("PARTITION", "de bug", "not a partition name"), ("ACCOUNT", "a;b", "not an account name"),
    ("NODELIST", "n1 n2", "not a node list"), ("FRAMEWORK", "../x", "not a folder name"),
])
def test_bad_values_name_the_key(key: str, value: object, why: str) -> None:
    with pytest.raises(UsageError, match=f"slurm_args {key}: .*{why}"):
        args(**{key: value})


def test_prefill_and_decode_go_together_and_need_a_framework() -> None:
    with pytest.raises(UsageError, match="DECODE_NODES: is required together with PREFILL_NODES"):
        args(FRAMEWORK="f", PREFILL_NODES=1)
    with pytest.raises(UsageError, match="PREFILL_NODES: .*need a FRAMEWORK"):
        args(PREFILL_NODES=1, DECODE_NODES=1)
    with pytest.raises(UsageError, match="NODES: is 3 but PREFILL_NODES \\+ DECODE_NODES is 4"):
        args(FRAMEWORK="f", PREFILL_NODES=2, DECODE_NODES=2, NODES=3)
    with pytest.raises(UsageError, match="DECODE_NODES: must be a positive integer"):
        args(FRAMEWORK="f", PREFILL_NODES=2, DECODE_NODES=0)


def test_unknown_key_suggests() -> None:
    with pytest.raises(UsageError, match="unknown key 'PARTITON'; did you mean 'PARTITION'"):
        parse({**BASE, "PARTITON": "x"})
    with pytest.raises(UsageError, match="'slurm_args' must be a dict"):
        parse(["debug"])


@pytest.mark.parametrize("image", ["<supply-your-image>", "{{IMAGE}}", "$IMAGE"])
def test_placeholder_image_refused(image: str) -> None:
    with pytest.raises(UsageError, match="DOCKER_IMAGE: .*looks like a placeholder"):
        args(DOCKER_IMAGE=image)


@pytest.mark.parametrize("image", ["rocm/sgl-dev:v0.4.9", "127.0.0.1:5000/x/y:1", "lmsysorg/sglang@sha256:" + "a" * 64, ""])
def test_real_images_accepted(image: str) -> None:
    assert args(DOCKER_IMAGE=image).docker_image == image


@pytest.mark.parametrize("image", ["rocm/x:", "a//b", "my image"])
def test_malformed_images_refused(image: str) -> None:
    with pytest.raises(UsageError, match="DOCKER_IMAGE"):
        args(DOCKER_IMAGE=image)


def test_extra_sbatch() -> None:
    assert args(EXTRA_SBATCH=["--exclusive", "--mem=8G", "--constraint=mi300"]).extra_sbatch == (
        "--exclusive", "--mem=8G", "--constraint=mi300")
    for bad, why in [("--exclusive", "must be a list"), (["--mem=1G\n#SBATCH --x"], "line break"),
                     (["exclusive"], "must start with '-'"), (["--nodes=4"], "use slurm_args NODES"),
                     (["-N4"], "use slurm_args NODES"), (["--output=x"], "sets it itself"),
                     (["--time 5"], "use slurm_args TIME"), ([""], "non-empty string"), ([3], "non-empty string"),
                     (["--comment='x"], "cannot be split")]:
        with pytest.raises(UsageError, match=f"slurm_args EXTRA_SBATCH: .*{why}"):
            args(EXTRA_SBATCH=bad)


def test_gpus_per_node_defaults_to_the_model() -> None:
    assert args().gpus_for(8) == 8 and args(GPUS_PER_NODE=0).gpus_for(8) == 0
    assert args(GPUS_PER_NODE="4").gpus_for(-1) == 4
    with pytest.raises(UsageError, match="GPUS_PER_NODE"):
        args().gpus_for(-1)


def test_partition_check() -> None:
    check_partition(args(), ["debug*", "batch"])
    with pytest.raises(UsageError, match=r"PARTITION: 'debgu' is not a partition .*sinfo knows: batch, debug.*'debug'"):
        check_partition(args(PARTITION="debgu"), ["debug*", "batch"])


def test_model_name_from_args() -> None:
    assert model_name_from_args(["--model", "Qwen3-32B", "--tp", "8"], "x") == "Qwen3-32B"
    assert model_name_from_args(["--tp=8", "--model=Llama-3"], "x") == "Llama-3"
    assert model_name_from_args(["--model"], "fallback") == "fallback"
    assert model_name_from_args([], "fallback") == "fallback"
