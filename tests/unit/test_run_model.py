"""``MadSession.run_model`` with a fake backend: every exit path, and the plan it runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.base import Cancel, Executor, ExecutorChoice, Plan, RunOutcome, RunSpec
from pytest_madengine.models import load_path
from pytest_madengine.output import OutputSink
from pytest_madengine.results.result import FAILURE, SKIPPED, SUCCESS
from pytest_madengine.session import MadSession, Options


@dataclass(frozen=True)
class FakePlan(Plan):
    argv: tuple[str, ...] = ()

    @property
    def executor(self) -> str:
        return "fake"

    def lines(self) -> list[str]:
        return [f"  would run {' '.join(self.argv)}"]


class Fake(Executor):
    """Plays back one outcome; records the plans it was asked to run."""

    name = "fake"

    def __init__(self, outcome: RunOutcome | None = None, output: str = "", fail_plan: str = "") -> None:
        self.outcome = outcome or RunOutcome(0, 1.5)
        self.output = output
        self.fail_plan = fail_plan
        self.ran: list[Plan] = []

    def plan(self, spec: RunSpec) -> FakePlan:
        if self.fail_plan:
            raise ExecutorError(self.fail_plan)
        return FakePlan(spec=spec, argv=spec.argv)

    def run(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        self.ran.append(plan)
        for line in self.output.splitlines():
            sink.write(line)
        return self.outcome


def session(tmp_path: Path, fake: Fake, **entry: Any) -> tuple[MadSession, Any]:
    (tmp_path / "scripts/m").mkdir(parents=True)
    (tmp_path / "scripts/m/run.sh").write_text("echo hi\n")
    fields = {"name": "m", "dockerfile": "docker/m", "scripts": "scripts/m/run.sh", "n_gpus": "0", **entry}
    (tmp_path / "models.json").write_text(json.dumps([fields]))
    opts = Options(root=tmp_path, executor="fake", log_dir=tmp_path / "mad_logs", work_dir=tmp_path / "mad_work")
    s = MadSession(opts, [], lambda name, ctx, o, rid: ExecutorChoice(fake, "test"))
    [model] = load_path(tmp_path / "models.json", tmp_path).models
    return s, model


def test_pass_runs_exactly_the_plan_and_logs_it_first(tmp_path: Path) -> None:
    fake = Fake(output="performance: 12.5 samples_per_second")
    s, model = session(tmp_path, fake, args="--batch 8")
    result = s.run_model(model, ["--extra", "1"])
    assert result.status == SUCCESS and result.rows[0].performance == 12.5
    [plan] = fake.ran
    assert plan.spec.argv == ("bash", "run.sh", "--batch", "8", "--extra", "1")
    assert plan.comparable() == s.plan_item(model, ["--extra", "1"]).comparable()  # what a dry run prints
    log = (tmp_path / "mad_logs/m.log").read_text().splitlines()
    assert log[0] == "[pytest-madengine] plan for m (fake): timeout 7200 s, GPUs none"
    assert (tmp_path / "mad_work/m/run.sh").exists()


@pytest.mark.parametrize(("outcome", "output", "reason"), [
    (RunOutcome(3, 1.0), "", "exit code 3"),
    (RunOutcome(0, 1.0), "no number here", "no performance line"),
    (RunOutcome(None, 5.0, timed_out=True), "", "timed out after 7200 s"),
    (RunOutcome(None, 2.0, interrupted=True), "", "interrupted after 2.0 s"),
    (RunOutcome(None, 0.0, problem="Docker daemon at x is not answering: gone"), "", "Docker daemon at x"),
])
def test_every_failing_exit_path_has_one_reason(tmp_path: Path, outcome: RunOutcome, output: str,
                                                reason: str) -> None:
    s, model = session(tmp_path, Fake(outcome, output))
    result = s.run_model(model, [])
    assert result.status == FAILURE and reason in result.reason


def test_a_plan_that_cannot_be_made_fails_the_model_and_runs_nothing(tmp_path: Path) -> None:
    fake = Fake(fail_plan="model 'm': no Dockerfile matches the run context")
    s, model = session(tmp_path, fake)
    result = s.run_model(model, [])
    assert result.status == FAILURE and result.reason.startswith("model 'm': no Dockerfile matches")
    assert fake.ran == []


def test_not_runnable_items_fail_before_the_backend(tmp_path: Path) -> None:
    fake = Fake()
    s, model = session(tmp_path, fake, n_gpus="0")
    (tmp_path / "scripts/m/run.sh").unlink()
    result = s.run_model(model, [])
    assert result.status == FAILURE and result.reason.startswith("script not found")
    assert fake.ran == []


def test_an_interrupted_session_runs_nothing_more(tmp_path: Path) -> None:
    fake = Fake()
    s, model = session(tmp_path, fake)
    s.interrupts.interrupted = True
    result = s.run_model(model, [])
    assert result.status == FAILURE and "interrupted" in result.reason and fake.ran == []


def test_skip_gpu_arch_skips_without_running(tmp_path: Path) -> None:
    fake = Fake()
    s, model = session(tmp_path, fake, skip_gpu_arch="gfx9")
    s.arch = "gfx942"
    result = s.run_model(model, [])
    assert result.status == SKIPPED and fake.ran == []
