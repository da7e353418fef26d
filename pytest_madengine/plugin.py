"""pytest wiring: options, hooks, fixtures. Every hook delegates to a module."""

from __future__ import annotations

import os
import signal
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_madengine import hookspecs
from pytest_madengine.context import Context
from pytest_madengine.errors import MadError, MadWarning, UsageError
from pytest_madengine.executors.base import ExecutorChoice
from pytest_madengine.executors.factory import BuiltinExecutors
from pytest_madengine.models import BrokenEntry, discover, key_of, load_path, parse_tags, select, spec_name
from pytest_madengine.multinode.settings import MultiNode
from pytest_madengine.plugins import regression as runplugins
from pytest_madengine.plugins import terminal
from pytest_madengine.plugins.items import SESSION_KEY, BrokenItem, ModelItem, ModelsFile, mad_session
from pytest_madengine.results import report
from pytest_madengine.results.result import FAILURE, ModelResult
from pytest_madengine.session import MadSession, Options

MODEL_ITEMS = (ModelItem, BrokenItem)


def _tagged(kind: str) -> Callable[[str], tuple[str, str]]:
    return lambda value: (kind, value)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("madengine", "pytest-madengine: models.json workloads as tests")
    g.addoption("--mad-tags", action="append", default=[], metavar="TAGS",
                help="select models by name, tag, 'all', 'scope/tag' or 'name:key=value' (repeat or comma-separate)")
    g.addoption("--mad-models", action="append", default=[], metavar="PATH",
                help="collect this models.json too (repeatable)")
    g.addoption("--mad-context", action="append", dest="mad_context_sources", type=_tagged("text"),
                default=[], metavar="DICT", help="additional context: JSON or a Python dict literal (repeatable)")
    g.addoption("--mad-context-file", action="append", dest="mad_context_sources", type=_tagged("file"),
                metavar="PATH", help="additional context from a JSON or YAML file (repeatable; later wins)")
    g.addoption("--mad-executor", default="auto", metavar="NAME",
                help="where scripts run: auto (slurm with slurm_args or slurm in the context, else docker when a "
                     "Docker daemon answers, else local), docker, local, slurm, or a plugin's backend")
    g.addoption("--mad-skip-model-run", action="store_true",
                help="run everything up to the model's script (build, container, pre/post scripts), not the script")
    g.addoption("--mad-dry-run", action="store_true",
                help="print every selected model's plan (image, container, argv, sbatch script) and run nothing")
    g.addoption("--mad-log-dir", default="mad_logs", metavar="DIR", help="per-model logs (default mad_logs/)")
    g.addoption("--mad-work-dir", default="mad_work", metavar="DIR",
                help="per-model run folders (default mad_work/)")
    g.addoption("--mad-timeout", type=int, default=None, metavar="S",
                help="timeout in seconds for every model, overriding models.json (0 = none)")
    g.addoption("--mad-live-output", action="store_true", help="stream model output to the terminal")
    g.addoption("--mad-perf-csv", default="perf.csv", metavar="PATH", help="madengine perf.csv to append to")
    g.addoption("--mad-gpus", default="all", metavar="SPEC",
                help="GPU pool: all (default), none, or ids like 0-3,6 (a virtual pool on hosts without GPUs)")
    g.addoption("--mad-disable-skip-gpu-arch", action="store_true", help="run models despite skip_gpu_arch")
    g.addoption("--mad-rebuild", action="store_true", help="docker: build images even when unchanged")
    g.addoption("--mad-keep-alive", action="store_true", help="docker: keep containers and print how to enter them")
    g.addoption("--mad-force-mirror-local", default=None, metavar="PATH",
                help="data folder (must exist; shared by all nodes in multi-node runs): MAD_DATAHOME, "
                     "mounted at the same path in containers")
    g.addoption("--mad-data-config", default=None, metavar="PATH",
                help="madengine's data.json: where each dataname of a model's `data` comes from "
                     "(default: data.json in the checkout, when there is one)")
    g.addoption("--mad-baseline", default=None, metavar="PATH",
                help="perf.csv or JUnit file of an earlier run: a model whose result is worse fails")
    g.addoption("--mad-regression-threshold", type=float, default=5.0, metavar="PCT",
                help="with --mad-baseline: fail when worse than the baseline by more than PCT percent (default 5)")
    g.addoption("--mad-summary", default=None, metavar="PATH",
                help="write the results table as Markdown here, with a chart beside it (PATH with .svg)")
    b = parser.getgroup("madengine-build", "pytest-madengine: build once, run many")
    b.addoption("--mad-build-only", action="store_true",
                help="build (or reuse) every selected model's image, push it with --mad-registry, write the "
                     "build manifest; run nothing")
    b.addoption("--mad-build-jobs", type=int, default=0, metavar="N",
                help="with --mad-build-only: images built at a time (default: the CPU count, at most 8)")
    b.addoption("--mad-build-perf-rows", action="store_true",
                help="with --mad-build-only: a perf.csv row per build (build_duration filled)")
    b.addoption("--mad-target-archs", action="append", default=[], metavar="ARCHS",
                help="with --mad-build-only: one image per GPU architecture (gfx942,gfx90a; repeatable)")
    b.addoption("--mad-registry", default="", metavar="HOST[/NAMESPACE]",
                help="push every built image there, tagged with its inputs' hash (login from credential.json or env)")
    b.addoption("--mad-manifest-output", default="build_manifest.json", metavar="FILE",
                help="with --mad-build-only: where the build manifest goes (default build_manifest.json)")
    b.addoption("--mad-manifest", default=None, metavar="FILE",
                help="run exactly the images of this build manifest (pulled when absent, digest checked, no build)")
    b.addoption("--mad-use-image", default="", metavar="IMAGE", help="run every selected model in this image")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _options(config: pytest.Config) -> Options:
    root = Path(config.invocation_params.dir)
    opt = config.getoption
    def under_root(p: str) -> Path:  # absolute and normalised: the form a mount table shows
        return Path(os.path.normpath(os.path.join(root, p)))
    return Options(
        root=root, executor=opt("mad_executor"), log_dir=under_root(opt("mad_log_dir")),
        work_dir=under_root(opt("mad_work_dir")), timeout=opt("mad_timeout"),
        live_output=opt("mad_live_output"), gpus=opt("mad_gpus"),
        disable_skip_gpu_arch=opt("mad_disable_skip_gpu_arch"), rebuild=opt("mad_rebuild"),
        keep_alive=opt("mad_keep_alive"),
        force_mirror_local=under_root(opt("mad_force_mirror_local")) if opt("mad_force_mirror_local") else None,
        dry_run=opt("mad_dry_run"),
        data_config=under_root(opt("mad_data_config")) if opt("mad_data_config") else None,
        skip_model_run=opt("mad_skip_model_run"),
        node_folders=opt("mad_work_dir") == "mad_work" and opt("mad_log_dir") == "mad_logs",
        build_only=opt("mad_build_only"), build_jobs=opt("mad_build_jobs"), build_rows=opt("mad_build_perf_rows"),
        target_archs=tuple(a.strip() for v in opt("mad_target_archs") for a in v.split(",") if a.strip()),
        registry=opt("mad_registry"), manifest=under_root(opt("mad_manifest")) if opt("mad_manifest") else None,
        use_image=opt("mad_use_image"),
    )


def _check_build_options(config: pytest.Config) -> None:
    opt = config.getoption
    given = [name for name, on in (("--mad-build-only", opt("mad_build_only")), ("--mad-manifest", opt("mad_manifest")),
                                   ("--mad-use-image", opt("mad_use_image"))) if on]
    if len(given) > 1:
        raise pytest.UsageError(f"{' and '.join(given)} exclude each other: build, or run what was built")
    if opt("mad_build_jobs") < 0:
        raise pytest.UsageError(f"--mad-build-jobs: {opt('mad_build_jobs')} is not a number of builds (>= 1, 0 = default)")
    for name, value in (("--mad-build-jobs", opt("mad_build_jobs")), ("--mad-build-perf-rows", opt("mad_build_perf_rows")),
                        ("--mad-target-archs", opt("mad_target_archs"))):
        if value and not opt("mad_build_only"):
            raise pytest.UsageError(f"{name} needs --mad-build-only")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.help or config.option.version:
        return
    def make_executor(name: str, context: Context, options: Options, run_id: str) -> ExecutorChoice:
        choice = config.hook.pytest_mad_make_executor(config=config, name=name, context=context,
                                                      options=options, run_id=run_id)
        if choice is None:
            raise UsageError(f"--mad-executor: no plugin made a backend named {name!r}")
        return cast(ExecutorChoice, choice)

    if not config.pluginmanager.has_plugin("madengine-builtin-executors"):
        config.pluginmanager.register(BuiltinExecutors(), "madengine-builtin-executors")
    _check_build_options(config)
    try:
        session = MadSession(_options(config), config.getoption("mad_context_sources") or [], make_executor)
        tags = parse_tags(config.getoption("mad_tags"))
        runs_images = session.executor.name == "slurm" and not (session.options.build_only or session.options.registry)
        if (session.options.build_only or session.options.manifest or session.options.use_image
                or session.options.registry) and not (hasattr(session.executor, "build_only") or runs_images):
            raise UsageError(f"--mad-build-only and --mad-registry need the docker executor, --mad-manifest and "
                             f"--mad-use-image the docker or slurm one; this run uses {session.executor.name}")
        manifest = getattr(session.executor, "manifest", None)
        if manifest is not None and not tags:  # a manifest selects its own models
            tags = parse_tags([",".join(manifest.model_names)])
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    if (config.getoption("mad_timeout") or 0) < -1:
        raise pytest.UsageError(f"--mad-timeout: {config.getoption('mad_timeout')} is not a timeout; "
                                "give seconds, 0 for none or -1 for the default (7200 s)")
    config.stash[SESSION_KEY] = session
    if not hasattr(config, "workerinput"):  # once per run, not once per xdist worker
        for text in session.context_warnings:
            config.issue_config_time_warning(MadWarning(text), stacklevel=2)
    session.executor.progress = terminal.writer(config, prefix="madengine: ")  # build, pull, queue progress
    if session.executor.submits_ahead and not session.options.dry_run:  # queue later items' work early
        from pytest_madengine.plugins import ahead as slurm_ahead

        slurm_ahead.register(config, session)
    if session.options.build_only:
        from pytest_madengine.plugins import buildphase

        buildphase.register(config, session)
    try:
        runplugins.register(config, session)  # largest-first order, baseline check, summaries
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = session.options.root
    extra = [Path(p) if os.path.isabs(p) else root / p for p in config.getoption("mad_models")]
    session.model_files = {p.resolve() for p in [*discover(root), *extra]}
    session.tag_specs = tags
    # xdist's "dist" option and the "workerinput" attribute of a worker's config: no public way to
    # ask "am I the controller of a distributed run" from pytest_configure (no request, no session).
    if tags and config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput"):
        _check_tags_here(session, tags)
    if tags or extra:
        files = [str(p) for p in sorted(session.model_files)]
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            # config.args is not public (pytest 9); the public alternative, pytest_load_initial_conftests,
            # runs before --mad-tags can be read as we need it.
            config.args = files  # `pytest --mad-tags=x` runs models, not the project's own tests
        else:
            config.args = [*config.args, *(f for f in files if f not in config.args)]


def _check_tags_here(session: MadSession, tags: list[Any]) -> None:
    """Under xdist the workers collect, and a tag error raised there crashes xdist after every
    model is counted as lost. The controller reads the models files once more to give the
    usage error before any worker starts."""
    candidates: list[Any] = []
    names: set[str] = set()
    for path in sorted(session.model_files):
        try:
            loaded = load_path(path, session.options.root)
        except MadError:
            continue  # an unreadable file is reported by the workers as its own failing item
        candidates += [*loaded.models, *loaded.broken]
        for model in loaded.models:
            names.update(f"{model.name}[{v.label}]" for v in session.variants(model)[0])
    try:
        select(candidates, [t for t in tags if spec_name(t) not in names])
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    return mad_session(config).header() if SESSION_KEY in config.stash else []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if SESSION_KEY in config.stash:
        opts = mad_session(config).options
        if collection_path in (opts.log_dir, opts.work_dir):
            return True
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    """A models file is collected by this plugin alone. pytest's Python collector would also
    take a ``get_models_json.py`` passed as an argument (or matching ``python_files``) and
    import it as a test module: without madengine that import fails, and same-named
    generators clash ("import file mismatch"). The collectors others made for it are only
    constructed, not yet imported, so dropping them here imports nothing."""
    collectors = yield
    config = parent.config
    if SESSION_KEY in config.stash and file_path.resolve() in mad_session(config).model_files:
        return [ModelsFile.from_parent(parent, path=file_path)]
    return collectors


def _candidate(item: Any) -> Any:
    if isinstance(item, ModelItem):
        return item.model
    if item.entry is not None:
        return item.entry
    return None  # an unreadable file: always kept, so the error is seen


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION_KEY not in config.stash:
        return
    specs = mad_session(config).tag_specs
    models = [i for i in items if isinstance(i, MODEL_ITEMS)]
    if not specs or not models:
        return
    # A tag naming one item of a model run with several Dockerfiles (``name[ctx2a.ubuntu.amd]``)
    # selects that item alone.
    variant_items = {i.name for i in models if isinstance(i, ModelItem) and i.variant is not None}
    by_item = {spec_name(sp): sp for sp in specs if spec_name(sp) in variant_items}
    candidates = [c for c in map(_candidate, models) if c is not None]
    rest = [sp for sp in specs if spec_name(sp) not in by_item]
    try:
        chosen = select(candidates, rest) if rest else {}
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    keep, drop = [], []
    for item in items:
        if not isinstance(item, MODEL_ITEMS):
            keep.append(item)
            continue
        cand = _candidate(item)
        own = by_item.get(item.name)
        if cand is None or key_of(cand) in chosen or own is not None:
            if cand is not None:
                item.extra_args = tuple(chosen.get(key_of(cand), ())) + (own.extra_args if own is not None else ())
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                          pytest.TestReport]:
    rep = yield
    plan = getattr(item, "mad_plan", None)
    if plan and rep.when == "call":
        setattr(rep, "mad_plan", plan)  # noqa: B010 - travels to the xdist controller with the report
    result = getattr(item, "mad_result", None)
    if isinstance(item, MODEL_ITEMS) and result is not None and rep.when == "call":
        if rep.failed and result.status != FAILURE:
            # The run looked fine but the item failed after it (a pytest_mad_result hook raised):
            # the reports must say what pytest says.
            last = str(rep.longrepr).strip().splitlines()[-1:] if rep.longrepr else []
            result.fail(result.reason or f"failed after the run: {last[0] if last else 'error in a hook'}")
        setattr(rep, "mad_result", result.to_dict())  # noqa: B010 - read back by result_from_report
        if item.config.getini("junit_family") in ("xunit1", "legacy"):
            item.user_properties.extend(report.junit_properties(result))
    return rep


def _is_model_nodeid(nodeid: str) -> bool:
    base = nodeid.split("::", 1)[0]
    return "::" in nodeid and (base.endswith(".json") or base.endswith("get_models_json.py"))


class Reporter:
    """Controller-side: perf.csv, JUnit (xunit2 form) and the summary, from reports, so the
    same code serves plain runs and xdist (whose workers only ship reports)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.perf_csv = Path(config.getoption("mad_perf_csv"))
        if not self.perf_csv.is_absolute():
            self.perf_csv = Path(config.invocation_params.dir) / self.perf_csv
        mad = mad_session(config)
        if (mad.options.node_folders and mad.multi_node.needs_barrier and mad.multi_node.node_rank > 0
                and config.getoption("mad_perf_csv") == "perf.csv"):
            # A shared checkout: node 0 writes the run's perf.csv; the others keep their rows by their logs.
            self.perf_csv = mad.options.log_dir / "perf.csv"
        self.meta = report.run_meta(Path(config.invocation_params.dir), os.environ)
        self.results: list[ModelResult] = []
        self.seen: set[str] = set()
        self.expected: dict[str, None] = {}  # selected model nodeids, in order
        self.started: dict[str, Any] = {}  # nodeid -> the xdist worker that began it (JUnit keys on both)
        # Only a session that reached its run loop owes selected models a result: a usage
        # error, --collect-only, --setup-only or --setup-plan ran nothing and must write nothing.
        self.loop_started = False
        self.perf_errors: list[str] = []  # rows perf.csv could not take ("<model>: <why>")
        self.collection_error = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        opt = self.config.option
        if not (opt.collectonly or getattr(opt, "setuponly", False) or getattr(opt, "setupplan", False)
                or opt.mad_dry_run):
            self.loop_started = True

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and not self.collection_error:
            lines = str(report.longrepr).strip().splitlines() if report.longrepr else []
            detail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "error")
            self.collection_error = f"{report.nodeid or 'session'}: {detail}"

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected.update((i.nodeid, None) for i in session.items if isinstance(i, MODEL_ITEMS))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.expected.update((i, None) for i in ids if _is_model_nodeid(i))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Nothing is lost: a selected model that never reported (Ctrl-C, SIGTERM, -x, a lost
        worker) still gets its failed testcase and FAILURE row, before JUnit is written."""
        TestReport = pytest.TestReport

        missing = [n for n in self.expected if n not in self.seen]
        if not missing or not self.loop_started:
            self._fail_on_lost_rows(session)
            return
        if self.collection_error and not self.config.option.continue_on_collection_errors:
            reason = f"not run: collection failed: {self.collection_error}"
        elif exitstatus == pytest.ExitCode.INTERRUPTED:
            reason = "not run: the session was interrupted (Ctrl-C or SIGTERM) before this model finished"
        elif session.shouldfail or session.shouldstop:
            reason = f"not run: the session stopped early ({session.shouldfail or session.shouldstop})"
        else:
            reason = "no result: the process running this model was lost"
        for nodeid in missing:
            path, _, name = nodeid.partition("::")
            for when, outcome in (("call", "failed"), ("teardown", "passed")):
                rep = TestReport(nodeid=nodeid, location=(path, None, name), keywords={}, outcome=outcome,  # type: ignore[arg-type]
                                 longrepr=reason if outcome == "failed" else None, when=when)  # type: ignore[arg-type]
                setattr(rep, "mad_result", ModelResult(model=name, status=FAILURE, reason=reason).to_dict())  # noqa: B010
                if self.started.get(nodeid) is not None:  # complete the testcase its worker opened
                    setattr(rep, "node", self.started[nodeid])  # noqa: B010
                session.config.hook.pytest_runtest_logreport(report=rep)
        self._fail_on_lost_rows(session)

    def _fail_on_lost_rows(self, session: pytest.Session) -> None:
        """A row perf.csv could not take is a lost result: the run must not exit 0."""
        if self.perf_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        plan = getattr(report, "mad_plan", None)
        if plan:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line("")
                for line in str(plan).splitlines():
                    reporter.write_line(line)
        self.started.setdefault(report.nodeid, getattr(report, "node", None))
        result = _report_result(report)
        if result is None or report.nodeid in self.seen:
            return
        self.seen.add(report.nodeid)
        self.results.append(result)
        if result.perf_row:
            try:
                rows = report_mod.perf_rows(result, self.meta)
                report_mod.append_perf_csv(self.perf_csv, rows)
                self._perf_entry(rows)
            except OSError as exc:  # its file system full: said once per model, and the run fails
                self.perf_errors.append(f"{result.model}: {exc.strerror or exc}")
                reporter = self.config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.write_line(f"madengine: cannot write the perf.csv row of {result.model} to "
                                        f"{self.perf_csv}: {exc.strerror or exc}")
        if self.config.getini("junit_family") not in ("xunit1", "legacy"):
            self._xunit2(report, result)

    def _perf_entry(self, rows: list[dict[str, str]]) -> None:
        """madengine's perf_entry.csv beside perf.csv: a copy of what perf.csv got, so a
        failure to write it is said and fails nothing."""
        entry = self.perf_csv.with_name(report_mod.PERF_ENTRY)
        if entry == self.perf_csv:
            return
        try:
            report_mod.write_perf_entry(entry, rows)
        except OSError as exc:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"madengine: cannot write {entry}: {exc.strerror or exc}")

    def _xunit2(self, rep: pytest.TestReport, result: ModelResult) -> None:
        # No public API reaches the LogXML instance (xml_key), adds a suite property from a
        # controller-side hook (record_testsuite_property is a fixture and fails under xdist), or
        # appends <system-out> to a testcase (node_reporter): private, tested by test_private_apis.py.
        try:
            from _pytest.junitxml import xml_key
        except ImportError:
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        props = report_mod.junit_properties(result)
        for name, value in props:
            xml.add_global_property(f"{rep.nodeid}::{name}", value)
        out = ET.Element("system-out")
        out.text = report_mod.metrics_block(props)
        xml.node_reporter(rep).append(out)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        rows = report_mod.summary_rows(self.results)
        terminalreporter.section("madengine results")
        for line in report_mod.format_table(rows, ("model", "status", "performance", "metric", "delta")):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"perf.csv: {self.perf_csv}")
        if self.perf_errors:
            terminalreporter.write_line(f"perf.csv: {len(self.perf_errors)} row(s) could not be written: "
                                        + "; ".join(self.perf_errors[:5]), red=True)


report_mod = report


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _report_result(rep: pytest.TestReport) -> ModelResult | None:
    result = report.result_from_report(rep)
    if result is not None:
        return result
    if not _is_model_nodeid(rep.nodeid):
        return None
    # when == "???": how xdist marks the report of a crashed worker's item (not documented).
    if str(rep.when) == "???" or (rep.when == "setup" and rep.failed) or (rep.when == "call" and rep.failed):
        # The process that ran it died or the item broke before reporting: still a row.
        name = rep.nodeid.split("::", 1)[1]
        reason = str(rep.longrepr).strip().splitlines()[-1] if rep.longrepr else "no result"
        return ModelResult(model=name, status=FAILURE, reason=reason or "no result")
    return None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if SESSION_KEY in config.stash and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Reporter(config), "madengine-reporter")
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # A CI abort sends SIGTERM: end like Ctrl-C, so sessionfinish still writes every result.
            signal.signal(signal.SIGTERM, _terminate)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if SESSION_KEY in session.config.stash:
        mad_session(session.config).close()


@pytest.fixture(scope="session")
def mad_context(pytestconfig: pytest.Config) -> Context:
    """The merged additional context of this run (read-only mapping)."""
    return mad_session(pytestconfig).context


@pytest.fixture(scope="session")
def slurm_context(pytestconfig: pytest.Config) -> Any:
    """The run's validated ``slurm_args`` (a frozen ``SlurmArgs``), or None without them."""
    from pytest_madengine.executors.slurm.args import parse

    ctx = mad_session(pytestconfig).context
    return parse(ctx["slurm_args"]) if "slurm_args" in ctx else None


@pytest.fixture(scope="session")
def multi_node(pytestconfig: pytest.Config) -> MultiNode:
    """This node's place in a multi-node run (``multi_node_args``); ``configured`` is False,
    and the run single-node, without it."""
    return mad_session(pytestconfig).multi_node


__all__ = ["BrokenEntry"]
