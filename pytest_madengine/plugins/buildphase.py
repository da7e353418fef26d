"""``--mad-build-only``: the build phase of "build once, run many".

Before the first item runs, every selected model's image is built (or reused, by its inputs'
hash) and pushed, distinct images in parallel (``--mad-build-jobs``); each item then reports
its own build as its testcase. The controller gathers the items' build records and writes
``build_manifest.json`` once, atomically, at the end. Under xdist each worker builds its own
items as they come (the workers already run in parallel).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.executors.docker import manifest
from pytest_madengine.plugins.items import ModelItem
from pytest_madengine.results.result import ModelResult

MAX_DEFAULT_JOBS = 8


def default_jobs() -> int:
    """One build per CPU, at most 8: a build is mostly the daemon's work (layers, compression)."""
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


class BuildPhase:
    def __init__(self, config: pytest.Config, session: Any, manifest_path: Path) -> None:
        self.config = config
        self.session = session
        self.manifest_path = manifest_path
        self.jobs = session.options.build_jobs or default_jobs()
        self.records: dict[str, dict[str, Any]] = {}  # nodeid -> build record (controller side)
        self.loop_started = False

    def _say(self, text: str) -> None:
        progress = self.session.executor.progress
        if progress is not None:
            progress(text)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        opt = self.config.option
        if opt.collectonly or opt.mad_dry_run:
            return
        self.loop_started = True
        if hasattr(self.config, "workerinput") or self.config.getoption("dist", "no") != "no":
            return  # xdist: workers build their items one by one, in parallel with each other
        items = [i for i in session.items if isinstance(i, ModelItem)]
        if not items:
            return
        jobs = min(self.jobs, len(items))
        self._say(f"build phase: {len(items)} model(s), {jobs} build(s) at a time (--mad-build-jobs)")
        start = time.monotonic()
        done = 0
        lock = threading.Lock()

        def build(item: ModelItem) -> tuple[ModelItem, tuple[ModelResult, dict[str, Any]] | None]:
            try:
                return item, self.session.build_model(item.model, item.extra_args, item.variant, item.name)
            except Exception:  # noqa: BLE001 - the item builds again on its turn and reports why
                return item, None

        # Ctrl-C or SIGTERM stops every build in flight (their items then fail as interrupted).
        with self.session.interrupts.guard(), ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mad-build") as pool:
            futures = [pool.submit(build, it) for it in items]
            for fut in as_completed(futures):
                item, built = fut.result()
                if built is None:
                    continue
                item.mad_prebuilt = built
                result = built[0]
                with lock:
                    done += 1
                    how = ("built" if result.passed else "FAILED") + (f" in {result.build_duration:.1f} s"
                                                                      if result.build_duration else "")
                    if result.passed and not result.build_duration:
                        how = "up to date (reused)"
                    self._say(f"[{done}/{len(items)}] {item.name}: {how}")
        self._say(f"build phase: {len(items)} model(s) in {time.monotonic() - start:.2f} s")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
            None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        record = getattr(item, "mad_build_record", None)
        if record is not None and rep.when == "call":
            setattr(rep, "mad_build", record)  # noqa: B010 - travels to the xdist controller with the report
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "mad_build", None)
        if isinstance(record, dict) and report.nodeid not in self.records:
            self.records[report.nodeid] = record

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput") or not self.loop_started:
            return
        records = [manifest.BuildRecord.from_json(r) for r in self.records.values()]
        creds = sorted({str(r.model_entry.get("cred")) for r in records if r.model_entry.get("cred")})
        document = manifest.compose(records, self.session.context, creds)
        manifest.write_atomic(self.manifest_path, document)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            s = document["summary"]
            reporter.write_line(f"madengine: build manifest {self.manifest_path}: {len(s['successful_builds'])} image(s), "
                                f"{len(s['failed_builds'])} failed build(s), {s['failed_pushes']} failed push(es)")


def register(config: pytest.Config, session: Any) -> None:
    out = Path(config.getoption("mad_manifest_output"))
    if not out.is_absolute():
        out = Path(config.invocation_params.dir) / out
    config.pluginmanager.register(BuildPhase(config, session, out), "madengine-build-phase")
