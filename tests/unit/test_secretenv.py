"""The secret environment: one masking rule, the split, the 0600 file and the loader that
reads and deletes it (run for real with bash), and where the Docker and SLURM plans put it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine import masking
from pytest_madengine.context import Context
from pytest_madengine.executors import secretenv
from pytest_madengine.executors.base import RunSpec, shown_value
from pytest_madengine.executors.docker import manifest
from pytest_madengine.executors.docker import plan as dplan
from pytest_madengine.executors.slurm import jobscript
from pytest_madengine.executors.slurm.batch import BatchPlan, task_script
from pytest_madengine.executors.slurm.deploy import SlurmSettings
from pytest_madengine.executors.slurm.executor import sbatch_environ
from pytest_madengine.models import Model, run_options

CANARY = "cnry-0123456789"


@pytest.mark.parametrize(("name", "secret"), [
    ("HF_TOKEN", True), ("db_password", True), ("OPENAI_API_KEY", True), ("MAD_SECRETS_X", True),
    ("MY_SECRET", True), ("AWS_SECRET_ACCESS_KEY", True), ("MODE", False), ("MAD_MODEL_NAME", False),
])
def test_one_rule_for_names(name: str, secret: bool) -> None:
    assert masking.looks_secret(name) is secret
    assert manifest.is_secret_name(name) is secret  # the manifest's build args and context
    shown = run_options.describe(run_options.parse(f"-e {name}=v", {}))
    assert ("***" in " ".join(shown)) is secret  # additional_docker_run_options in plans
    assert (shown_value(name, "v") == "***") is secret


def test_split_by_name_marked_value_and_known_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAD_SECRETS_DB", "pa55-word-xyz")
    (tmp_path / "credential.json").write_text(json.dumps({
        "reg:5000": {"username": "u", "password": "reg-pass-1"},
        "NAS_NODES": [{"HOST": "h", "USERNAME": "n", "PASSWORD": "nas-pass-1"}]}))
    known = secretenv.known_secrets(tmp_path)
    assert {"pa55-word-xyz", "reg-pass-1", "nas-pass-1"} <= set(known)
    env = {"HF_TOKEN": "t0k", "DB_URL": "pg://u:pa55-word-xyz@db", "REG": "reg-pass-1", "MODE": "fast"}
    plain, secret = secretenv.split(env, known)
    assert plain == {"MODE": "fast"} and set(secret) == {"HF_TOKEN", "DB_URL", "REG"}


def test_the_loader_reads_deletes_and_keeps_the_exit_code(tmp_path: Path) -> None:
    path = tmp_path / secretenv.ENV_FILE
    secretenv.write(path, {"HF_TOKEN": CANARY, "Q": "a 'b' $c\nd"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CANARY not in " ".join(secretenv.loader())  # fixed text: no value in any argv
    script = 'printf "%s|%s|" "$HF_TOKEN" "$Q"; ls -A; exit 7'
    done = subprocess.run([*secretenv.loader(), "bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 7 and done.stdout == f"{CANARY}|a 'b' $c\nd|" and not path.exists()
    done = subprocess.run([*secretenv.loader(), "true"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == secretenv.MISSING_EXIT and "cannot read the secret environment" in done.stderr
    with pytest.raises(ValueError, match="'A-B'"):
        secretenv.file_text({"A-B": "x"})


def _spec(tmp_path: Path, ctx: dict[str, Any], env: dict[str, str], options: str = "") -> RunSpec:
    raw = {"additional_docker_run_options": options} if options else {}
    model = Model(name="m", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/m", scripts="scripts/m/run.sh", n_gpus=0, tags=(), raw=raw)
    return RunSpec(model=model, argv=("bash", "run.sh"), env=env, run_dir=tmp_path / "run", workspace=tmp_path,
                   timeout=None, gpus=(), gpu_vendor="AMD", use_gpu_devices=False, context=Context(ctx), run_id="r1")


def test_docker_plan_keeps_secrets_out_of_the_containers_config(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {}, {"HF_TOKEN": CANARY, "MODE": "fast"}, options=f"-e DB_PASSWORD={CANARY}x -e B=1")
    c = dplan.plan_container(spec, "img", name="n", keep_alive=True)
    kw = c.run_kwargs()
    assert CANARY not in json.dumps({k: kw[k] for k in ("environment", "command", "labels")})
    assert kw["environment"] == {"MODE": "fast", "B": "1"}
    assert c.secret_env == {"HF_TOKEN": CANARY, "DB_PASSWORD": CANARY + "x"}
    assert c.command[:4] == list(secretenv.loader()) and "mad-keep-alive" in c.command
    assert CANARY not in repr(c)
    text = dplan.DockerPlan(spec=spec, build=dplan.BuildPlan("img", "", None, "", {}, "", ""), container=c).render()
    assert CANARY not in text and "    HF_TOKEN=***" in text and "secret environment" in text
    plain = dplan.plan_container(_spec(tmp_path, {}, {"MODE": "x"}), "img", name="n", keep_alive=False)
    assert plain.command == ["bash", "run.sh"] and plain.secret_env == {}  # nothing secret: as before


def test_slurm_task_scripts_source_a_file_instead(tmp_path: Path) -> None:
    node_dir = tmp_path / "work"
    (node_dir / "node0").mkdir(parents=True)
    (node_dir / "node0" / "run.sh").write_text('echo "[$HF_TOKEN] [$MODE]"; ls -A\n')
    plan = BatchPlan(job_name="j", job_dir=tmp_path, node_dir=node_dir, argv=("bash", "run.sh"),
                     env={"MODE": "fast"}, secret_env={"HF_TOKEN": CANARY}, nodes=1)
    text = task_script(plan)
    assert CANARY not in text and "HF_TOKEN" not in text and CANARY not in repr(plan)
    secretenv.write(plan.secret_path(0), plan.secret_env)
    env = {"PATH": os.environ["PATH"], "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_ID": "7"}
    out = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == f"[{CANARY}] [fast]" and not plan.secret_path(0).exists()
    in_image = task_script(BatchPlan(job_name="j", job_dir=tmp_path, node_dir=node_dir, argv=("bash", "run.sh"),
                                     env={"MODE": "fast"}, secret_env={"HF_TOKEN": CANARY}, docker_image="img"))
    line = next(x for x in in_image.splitlines() if x.startswith("docker run"))
    assert "-e HF_TOKEN" not in line and "-e MODE" in line and secretenv.LOADER_NAME in line
    assert f"/{secretenv.ENV_FILE}" in in_image and CANARY not in in_image


@pytest.mark.parametrize("kind", ["tasks", "slurm_multi"])
def test_slurm_key_jobs_source_a_file_instead(tmp_path: Path, kind: str) -> None:
    job = jobscript.DeployJob(kind=kind, job_name="j", job_dir=tmp_path, node_dir=tmp_path / "w", argv=("bash", "x"),
                              settings=SlurmSettings(), time="1", gpus_per_node=0, launcher="torchrun",
                              env={"MODE": "fast"}, secret_env={"HF_TOKEN": CANARY},
                              ranks=(jobscript.NodeForm(env={"HF_TOKEN": "launcher's"}),))
    texts = jobscript.batch_script(job) + (jobscript.task_script(job) if kind == "tasks" else "")
    assert CANARY not in texts and "HF_TOKEN" not in texts and ".secret-env.node" in texts
    for text in texts.split("#!/bin/bash")[1:]:
        subprocess.run(["bash", "-n"], input="#!/bin/bash" + text, text=True, check=True)


def test_sbatch_gets_no_secret_variable() -> None:
    env = {"PATH": "/bin", "MAD_SECRETS_A": "marked-1", "HF_TOKEN": "t", "URL": "x://u:marked-1@h",
           "NAS_NODES": "[]", "HOME": "/root"}
    assert sbatch_environ(env) == {"PATH": "/bin", "HOME": "/root"}


def test_the_manifest_stores_no_secret_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAD_SECRETS_DB", "pa55-word-xyz")
    env = {"HF_TOKEN": "x", "DB_URL": "pg://u:pa55-word-xyz@h", "MODE": "1"}
    assert manifest.public_env(env) == {"HF_TOKEN": "***", "DB_URL": "***", "MODE": "1"}
    rec = manifest.BuildRecord("m", (manifest.ImageEntry(key="img", model="m", docker_image="img"),),
                               {"name": "m", "env_vars": env})
    doc = manifest.compose([rec], {"docker_env_vars": env}, [])
    assert "pa55-word-xyz" not in json.dumps(doc) and doc["built_models"]["img"]["env_vars"]["MODE"] == "1"


@pytest.mark.parametrize("sbatch_fails", [False, True])
def test_slurm_secret_files_are_gone_on_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   sbatch_fails: bool) -> None:
    """Written 0600 before sbatch, sbatch runs without our secret variables, and the files are
    removed whether the job is refused, cancelled at its deadline, or never read."""
    import dataclasses

    from pytest_madengine.executors.base import Cancel
    from pytest_madengine.executors.slurm import executor as ex_mod
    from pytest_madengine.executors.slurm import poller as P
    from pytest_madengine.executors.slurm.executor import SlurmExecutor
    from pytest_madengine.output import OutputSink
    from pytest_madengine.session import Options
    from tests.unit.test_slurm_deploy import Forever, spec

    seen: dict[str, Any] = {}

    class Cluster(Forever):
        def run(self, argv: list[str], *, timeout: float = 60.0, env: Any = None) -> str:
            if argv[0] == "sbatch":
                seen["env"] = env
                seen["files"] = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob(".secret-env.*")}
                if sbatch_fails:
                    raise P.ControllerError("sbatch: error: refused")
            return super().run(argv, timeout=timeout, env=env)

    monkeypatch.setattr(ex_mod, "CANCEL_WAIT_S", 0.2)
    monkeypatch.setenv("MAD_SECRETS_X", CANARY)
    ex = SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"),
                       Context({"slurm": {"partition": "debug", "time": "5", "nodes": 2}}), "0123456789ab",
                       poller=P.SlurmPoller(Cluster(), use_sacct=True))
    s = spec(tmp_path, env={"HF_TOKEN": CANARY, "MODE": "x"})
    s.run_dir.mkdir(parents=True)
    plan = ex.plan(s)
    assert CANARY not in plan.render() and "HF_TOKEN=***" in plan.render()
    sink = OutputSink(tmp_path / "m.log")
    out = ex.run(dataclasses.replace(plan, deadline_s=0.2), sink, Cancel())
    sink.close()
    ex.close()
    assert out.problem
    assert seen["files"] == {".secret-env.node0": 0o600, ".secret-env.node1": 0o600}
    assert "MAD_SECRETS_X" not in seen["env"] and seen["env"].get("PATH")
    assert not list(tmp_path.rglob(".secret-env.*"))
    assert all(CANARY not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_docker_secret_file_is_written_0600_and_gone_when_the_container_never_starts(tmp_path: Path) -> None:
    from docker.errors import APIError

    from pytest_madengine.executors.base import Cancel
    from pytest_madengine.executors.docker import container as dcontainer
    from pytest_madengine.output import OutputSink

    spec = _spec(tmp_path, {}, {"HF_TOKEN": CANARY})
    spec.run_dir.mkdir()
    plan = dplan.plan_container(spec, "img", name="n", keep_alive=False)
    seen: dict[str, int] = {}

    class Api:
        def remove_container(self, cid: str, **kw: Any) -> None:
            pass

    class Containers:
        def create(self, **kw: Any) -> Any:
            seen["mode"] = stat.S_IMODE((spec.run_dir / secretenv.ENV_FILE).stat().st_mode)
            assert CANARY not in json.dumps({k: kw[k] for k in ("environment", "command", "labels")})
            raise APIError("no such image")

    class Client:
        api, containers = Api(), Containers()

    sink = OutputSink(tmp_path / "m.log")
    out = dcontainer.run_container(None, Client(), spec, plan, sink, Cancel(), lambda *a: None)  # type: ignore[arg-type]
    sink.close()
    assert out.problem.startswith("cannot start container n") and seen == {"mode": 0o600}
    assert not (spec.run_dir / secretenv.ENV_FILE).exists()


def test_slurm_key_tasks_in_an_image_hand_the_file_to_the_container(tmp_path: Path) -> None:
    from pytest_madengine.executors.slurm.container import NodeImage

    job = jobscript.DeployJob(kind="tasks", job_name="j", job_dir=tmp_path, node_dir=tmp_path / "w", argv=("bash", "x"),
                              settings=SlurmSettings(), time="1", gpus_per_node=0, launcher="torchrun",
                              env={"MODE": "fast"}, secret_env={"HF_TOKEN": CANARY},
                              ranks=(jobscript.NodeForm(env={"HF_TOKEN": "launcher's"}),), image=NodeImage("img"))
    text = jobscript.task_script(job)
    run = next(x for x in text.splitlines() if x.startswith("docker run"))
    assert "-e HF_TOKEN" not in run and "-e MODE" in run and secretenv.LOADER_NAME in run
    assert f"/{secretenv.ENV_FILE}" in text and CANARY not in text
    assert f"MAD_SECRET_FILE={job.secret_word()}" not in text  # not sourced on the host: the container reads it
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
