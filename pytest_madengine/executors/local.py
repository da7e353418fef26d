"""Run a model's script on this host, in its own process group."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pytest_madengine import process
from pytest_madengine.executors.base import Cancel, Executor, Plan, RunOutcome, RunSpec, render_env
from pytest_madengine.output import OutputSink


@dataclass(frozen=True)
class LocalPlan(Plan):
    argv: tuple[str, ...] = ()
    cwd: str = ""
    env_added: Mapping[str, str] = field(default_factory=dict)  # over pytest's own environment

    @property
    def executor(self) -> str:
        return "local"

    def lines(self) -> list[str]:
        own = self.argv[len(self.spec.wrapper):]  # the model's command; the wrapper is "around the script"
        return [f"  run: {shlex.join(own)}", f"  in: {self.cwd} (own process group)",
                "  environment added:", *render_env(self.env_added, "    ")]


class LocalExecutor(Executor):
    name = "local"

    def plan(self, spec: RunSpec) -> LocalPlan:
        argv = list(spec.argv)
        if argv and argv[0] == "python3":
            argv[0] = sys.executable  # the interpreter pytest runs on, with its packages
        argv = list(spec.command(argv))
        env = dict(spec.env)
        # torchrun and python from pytest's own environment, even when it is not activated
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        return LocalPlan(spec=spec, argv=tuple(argv), cwd=str(spec.run_dir), env_added=env)

    def run(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        assert isinstance(plan, LocalPlan)
        spec, argv = plan.spec, list(plan.argv)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, cwd=plan.cwd, env={**os.environ, **plan.env_added}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return RunOutcome(None, 0.0, problem=f"cannot start {argv[0]}: {exc.strerror or exc}")
        assert proc.stdout is not None
        ledger = process.record_group(spec.run_dir.parent / process.LEDGER, proc.pid, spec.model.name)
        reader = threading.Thread(target=sink.pump, args=(proc.stdout,), daemon=True)
        reader.start()
        why = None
        try:
            why = process.wait(proc, cancel, process.Deadline(spec.timeout, start))
            # The group goes on every path: a script's background children must not outlive its item.
            process.kill_group(proc.pid, leader=proc)
        finally:
            process.kill_now(proc.pid)  # also when a second Ctrl-C lands in the grace period above
            ledger.unlink(missing_ok=True)
        timed_out, interrupted = why == process.TIMED_OUT, why == process.CANCELLED
        proc.wait()
        reader.join(timeout=5)
        if reader.is_alive():
            # A process that left the group (setsid, a daemon) still holds the output open:
            # closing the pipe now would block on the reader; leave it to the reader thread.
            sink.note("a process outside the model's process group still holds its output open; "
                      "output after this point is not recorded")
        else:
            proc.stdout.close()
        duration = time.monotonic() - start
        return RunOutcome(proc.returncode, duration, timed_out=timed_out, interrupted=interrupted,
                          properties={"pid": proc.pid})
