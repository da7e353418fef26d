"""The `slurm` key's jobs in the model's image, end to end: the build phase pushes the images
to the open registry of .ci/setup-docker.sh (127.0.0.1:5000), the local copies are removed,
then one run from the manifest deploys four models on the cluster of .ci/setup-slurm.sh (nodes
n1..n4 share this host and its Docker):

* a 2-node torchrun job whose tasks run in containers of the pushed image (PyTorch CPU) and
  pass a gloo all_reduce, with a variable madengine's allow-list would drop;
* a 2-node job whose node 1 cannot pull (a ``docker`` in front on PATH refuses the pull on
  that node only): the item fails naming the node, node 0 stops waiting;
* a job past its timeout, cancelled: no container is left behind;
* a `local` data provider's folder in the job's container, read-only at its host path.

One pytest run serves the tests below (one build, one session), so each test reads its model's
part of it. Everything carries a ``madslurmimg<hex>`` token; what was made is removed.
Without Docker, the registry, the wheel or the cluster these tests skip, except under CI=true
where they fail.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import DOCKER_BASE, ModelRepo
from .test_slurm import PARTITION, _unavailable, cluster, props

pytestmark = [pytest.mark.slurm, pytest.mark.docker]
__all__ = ["cluster"]
REGISTRY = os.environ.get("MAD_TEST_REGISTRY", "127.0.0.1:5000")

STANDIN = """
    import os, sys, torch, torch.distributed as dist
    for name, want in (a.split("=", 1) for a in sys.argv[1:]):
        got = os.environ.get(name)
        assert got == want, f"{name}={got!r}, expected {want!r}"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    image = open("/built-by.txt").read().strip()
    print(f"rank {rank} of {world} node_rank {os.environ['NODE_RANK']} on {os.environ['SLURMD_NODENAME']} "
          f"image {image}: sum {t.item():g}", flush=True)
    dist.barrier()
    if rank == 0:
        print(f"performance: {t.item():g} allreduce_sum", flush=True)
    dist.barrier()
    os._exit(0)  # no gloo teardown at exit: see scripts/dummy_torchrun/train.py
"""


@dataclass
class Deployed:
    token: str
    path: Path
    out: str
    duration: dict[str, float]

    def name(self, short: str) -> str:
        return f"{self.token}_{short}"

    def log(self, short: str) -> str:
        return (self.path / "mad_logs" / f"{self.name(short)}.log").read_text()

    def props(self, short: str) -> dict[str, str]:
        return props(self.path)[self.name(short)]

    def row(self, short: str) -> dict[str, str]:
        with open(self.path / "perf.csv", newline="") as fh:
            return next(r for r in csv.DictReader(fh) if r["model"] == self.name(short))


def containers_of(job_id: str, wait: float = 20.0) -> list[str]:
    """Our containers of that job still there after up to ``wait`` s (the nodes' cleanup may
    finish just after the job's end is recorded)."""
    deadline = time.monotonic() + wait
    while True:
        names = subprocess.run(["docker", "ps", "-a", "--filter", f"name=mad-slurm-{job_id}-node",
                                "--format", "{{.Names}}"], capture_output=True, text=True, timeout=30).stdout.split()
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def pytest_run(path: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv], cwd=path,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))})


def remove_tagged(client: Any, token: str) -> None:
    for image in client.images.list():
        for tag in image.tags:
            if token in tag:
                try:
                    client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001
                    pass


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, client: Any, torch_image: str, cluster: None
             ) -> Iterator[Deployed]:
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5)
    except (urllib.error.URLError, OSError) as exc:
        _unavailable(f"registry {REGISTRY} does not answer ({exc}); run .ci/setup-docker.sh")
    docker = shutil.which("docker")
    assert docker is not None
    token = "madslurmimg" + uuid.uuid4().hex[:8]
    path = tmp_path_factory.mktemp(token)
    repo = ModelRepo(path)
    for stem, body in (("torch", f"FROM {torch_image}\n"), ("base", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n")):
        repo.script(f"docker/{stem}.any.Dockerfile", f"{body}RUN echo {token} > /built-by.txt\n")
    common = {"tags": [token], "n_gpus": "0"}
    # torchrun on two nodes, in the torch image; VLLM_MADTEST: a variable madengine's allow-list drops
    repo.script(f"scripts/{token}_torchrun/standin.py", STANDIN)
    repo.model(f"{token}_torchrun", '#!/bin/bash\nset -e\necho "runner: $MAD_MULTI_NODE_RUNNER"\n'
               # a secret variable: handed to each node's container through its 0600 file, never -e
               'echo "token $(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16)"\n'
               "$MAD_MULTI_NODE_RUNNER standin.py VLLM_MADTEST=kept NNODES=2 MAD_DEPLOYMENT_TYPE=slurm "
               "MAD_LAUNCHER=torchrun\n", dockerfile="docker/torch", timeout=150,
               slurm={"nodes": 2, "env_vars": {"VLLM_MADTEST": "kept"}}, distributed={"launcher": "torchrun"},
               env_vars={"HF_TOKEN": f"{token}-secret"}, **common)
    # node 1 cannot pull: a docker in front on PATH refuses the pull there, passes everything else on
    shim = repo.script("shim/docker", f"""
        #!/bin/bash
        if [ "$1" = pull ] && [ "${{SLURM_NODEID:-}}" = 1 ]; then
          echo "simulated: the registry is unreachable from $SLURMD_NODENAME" >&2; exit 1
        fi
        exec {docker} "$@"
    """)
    repo.model(f"{token}_nopull", "#!/bin/bash\necho waiting\nsleep 120\n", dockerfile="docker/base", timeout=100,
               slurm={"nodes": 2}, env_vars={"PATH": f"{shim.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                                      "/usr/bin:/sbin:/bin"}, **common)
    repo.model(f"{token}_late", "#!/bin/bash\necho started\nsleep 300\n", dockerfile="docker/base", timeout=3, **common)
    # a local data provider: its folder, inside the checkout (mounted read-write), read-only in the container
    (path / "words").mkdir()
    (path / "words" / "words.txt").write_text("alpha beta gamma\n")
    (path / "data.json").write_text(json.dumps({f"{token}_words": {"local": {"path": "words", "home": "/data"}}}))
    repo.model(f"{token}_data", '#!/bin/bash\nset -e\necho "datahome $MAD_DATAHOME image $(cat /built-by.txt)"\n'
               'if touch "$MAD_DATAHOME/probe" 2>/dev/null; then echo "writable"; exit 1; fi\n'
               'echo "performance: $(wc -w < "$MAD_DATAHOME/words.txt") words"\n', dockerfile="docker/base",
               timeout=60, data=f"{token}_words", **common)
    try:
        t0 = time.monotonic()
        build = pytest_run(path, f"--mad-tags={token}", "--mad-executor=docker", "--mad-build-only",
                           f"--mad-registry={REGISTRY}/madslurmimg", "--mad-context",
                           repr({"docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}}), timeout=600)
        assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-2000:]
        built = time.monotonic() - t0
        remove_tagged(client, token)  # the nodes are other hosts: only the registry has the images
        ctx = {"slurm": {"partition": PARTITION, "time": "3", "exclusive": False}}
        t0 = time.monotonic()
        res = pytest_run(path, "--mad-manifest=build_manifest.json", "--mad-context", repr(ctx), "-o",
                         "junit_family=xunit1", "--junitxml=junit.xml", timeout=400)
        took = {"build": built, "run": time.monotonic() - t0}
        print(f"\nslurm images: build phase {took['build']:.1f} s, run {took['run']:.1f} s")
        yield Deployed(token, path, res.stdout + res.stderr, took)
    finally:
        remove_tagged(client, token)


def test_two_node_torchrun_in_containers_from_the_manifest(deployed: Deployed) -> None:
    log = deployed.log("torchrun")
    row = deployed.row("torchrun")
    assert row["status"] == "SUCCESS" and row["performance"] == "3", (row, log[-3000:])
    manifest = json.loads((deployed.path / "build_manifest.json").read_text())
    entry = next(e for e in manifest["built_images"].values() if e["model"] == deployed.name("torchrun"))
    pinned = entry["registry_image"].rsplit(":", 1)[0] + "@" + entry["docker_sha"]
    assert f"docker pull {pinned}" in log  # the plan: by digest
    for rank in (0, 1):
        assert f"pytest-madengine: node {rank} pulls {entry['registry_image']}" in log, log
        # each rank ran in the image (its /built-by.txt), after the all_reduce over both nodes
        assert f"rank {rank} of 2 node_rank {rank} on n" in log and f"image {deployed.token}: sum 3" in log, log
    assert "runner: torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0 --master_addr=" in log
    secret = f"{deployed.token}-secret"
    assert log.count(f"token {hashlib.sha256(secret.encode()).hexdigest()[:16]}") == 2 and secret not in log, log
    p = deployed.props("torchrun")
    assert p["slurm_state"] == "COMPLETED" and p["nnodes"] == "2" and p["launcher"] == "torchrun"
    assert containers_of(p["slurm_job_id"]) == []


def test_a_failed_pull_on_one_node_fails_the_job_and_the_other_stops(deployed: Deployed) -> None:
    row = deployed.row("nopull")
    assert row["status"] == "FAILURE", row
    name = deployed.name("nopull")
    reason = next((ln for ln in deployed.out.splitlines() if f"{name}: " in ln and "cannot pull" in ln), "")
    assert "node 1 (n" in reason and f"cannot pull {REGISTRY}/madslurmimg/ci-{name}" in reason, deployed.out[-3000:]
    assert "(the image the manifest names, by its digest)" in reason and "FAILED" in reason
    log = deployed.log("nopull")
    assert "simulated: the registry is unreachable" in log
    p = deployed.props("nopull")
    assert float(p.get("run_s", "0")) < 60  # node 0 did not wait out its 120 s sleep
    assert containers_of(p["slurm_job_id"]) == []


def test_a_job_past_its_timeout_leaves_no_container(deployed: Deployed) -> None:
    row = deployed.row("late")
    assert row["status"] == "FAILURE", row
    assert f"{deployed.name('late')}: timed out after 3 s" in deployed.out
    p = deployed.props("late")
    assert "started" in deployed.log("late")  # it ran in its container before the scancel
    assert containers_of(p["slurm_job_id"]) == []


def test_a_local_data_providers_folder_is_in_the_container(deployed: Deployed) -> None:
    row = deployed.row("data")
    log = deployed.log("data")
    assert row["status"] == "SUCCESS" and row["performance"] == "3", (row, log[-2000:])
    assert (row["dataname"], row["data_provider_type"]) == (f"{deployed.token}_words", "local")
    assert f"datahome {deployed.path / 'words'} image {deployed.token}" in log and "writable" not in log


def test_dry_run_prints_the_job_that_runs_in_the_image(pytester: pytest.Pytester, cluster: None) -> None:
    ModelRepo(pytester.path).model("madslurmimg_plan", "echo 'performance: 1 x'\n", slurm={"nodes": 2},
                                   distributed={"launcher": "torchtitan"})
    image = f"{REGISTRY}/madslurmimg/never-pulled:1"
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mad-tags=madslurmimg_plan", "--mad-dry-run",
                                        f"--mad-use-image={image}", "--mad-context",
                                        repr({"slurm": {"partition": PARTITION, "time": "3"}}), timeout=60)
    out = res.stdout.str()
    assert "--- batch script ---" in out and "--- task script (run on every node) ---" in out, out
    assert f"docker pull {image} ||" in out and "-e TORCHTITAN_PIPELINE_PARALLEL_SIZE" in out
    assert 'NAME=mad-slurm-"$SLURM_JOB_ID"-node"$SLURM_NODEID"' in out and "exit $rc" in out
    assert not list(pytester.path.glob("mad_logs/**/job.sbatch"))  # nothing written, nothing submitted
