"""Guards on the private (or undocumented) pytest and pytest-xdist APIs pytest-madengine leans on.

Each test names the use site and what it needs, so a pytest or pytest-xdist upgrade that breaks
one fails here, with the reason, instead of somewhere deep in a regression run. The tests only
import and introspect (plus one short in-process pytester run); no xdist worker is started.

Use sites (keep in step with the comments there):

* plugin.py ``Reporter.pytest_sessionfinish``: ``_pytest.reports.TestReport`` built by hand,
  ``rep.node`` set to the xdist worker that opened the testcase.
* plugin.py ``Reporter._xunit2``: ``_pytest.junitxml.xml_key``, ``LogXML.add_global_property``,
  ``LogXML.node_reporter(report).append(element)``.
* plugin.py ``Reporter.pytest_runtest_logreport`` / ``_report_result``: ``report.node``,
  xdist's crash report ``when == "???"``, ``report.mad_result`` surviving xdist serialisation.
* plugin.py ``pytest_configure``: ``config.workerinput``, ``config.issue_config_time_warning``,
  ``config.args_source`` / ``pytest.Config.ArgsSource`` / ``config.args =``, option dests
  ``help``, ``version``, ``dist``; ``Reporter``: ``collectonly``, ``setuponly``, ``setupplan``,
  ``continue_on_collection_errors``, ``session.shouldfail`` / ``shouldstop``.
* terminal.py ``writer``: ``get_plugin("terminalreporter")``, ``get_plugin("capturemanager")``,
  ``CaptureManager.global_and_fixture_disabled()``.
* slurm/ahead.py ``_worker_queue``: xdist ``WorkerInteractor.torun.lock()``, ``nextitem_index``.
* runplugins.py ``register``, slurm/ahead.py: ``config.workerinput``.
* junit_results.py ``mangle``: a copy of ``_pytest.junitxml.mangle_test_address``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import textwrap
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

try:
    import xdist

    XDIST_VERSION = getattr(xdist, "__version__", "?")
except ImportError:  # a dependency of pytest-madengine; the xdist tests say so when it is missing
    xdist = None  # type: ignore[assignment]
    XDIST_VERSION = "not installed"


def _fail(api: str, where: str, problem: str, hint: str = "") -> None:
    text = (f"pytest-madengine uses {api} ({where}); {problem} "
            f"[pytest {pytest.__version__}, pytest-xdist {XDIST_VERSION}]")
    pytest.fail(text + (f": {hint}" if hint else ""), pytrace=False)


def _attr(module: str, name: str, where: str, hint: str = "") -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        _fail(f"{module}.{name}", where, f"'import {module}' now fails ({exc})", hint)
    if not hasattr(mod, name):
        _fail(f"{module}.{name}", where, f"{module} has no attribute {name!r} any more", hint)
    return getattr(mod, name)


def _member(owner: Any, name: str, api: str, where: str, hint: str = "") -> Any:
    if not hasattr(owner, name):
        _fail(api, where, f"{getattr(owner, '__qualname__', type(owner).__qualname__)} has no attribute {name!r} any more", hint)
    return getattr(owner, name)


def _bindable(func: Callable[..., Any], api: str, where: str, *args: Any, **kwargs: Any) -> None:
    """``func`` still accepts the call pytest-madengine makes (``args`` include a ``self`` stand-in)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return  # not introspectable (a C callable): nothing to say
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        shown = ", ".join([*(type(a).__name__ for a in args[1:]), *(f"{k}=" for k in kwargs)])
        _fail(api, where, f"its signature is now {sig} and no longer accepts ({shown}): {exc}")


def _source(func: Any) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        pytest.skip(f"no source for {func!r}")


needs_xdist = pytest.mark.skipif(xdist is None, reason="pytest-xdist is not installed")


# --- _pytest.junitxml: xml_key, LogXML.node_reporter / add_global_property, _NodeReporter.append ---

XUNIT2 = "plugin.py Reporter._xunit2, adding <system-out> and suite properties to a model's testcase"


def test_junitxml_xml_key_is_a_stash_key():
    key = _attr("_pytest.junitxml", "xml_key", XUNIT2,
                "find where pytest keeps its LogXML now, or drop <system-out>/properties under xunit2")
    if not isinstance(key, pytest.StashKey):
        _fail("_pytest.junitxml.xml_key", XUNIT2, f"it is now a {type(key).__name__}, not a pytest.StashKey")
    src = _source(_attr("_pytest.junitxml", "pytest_configure", XUNIT2))
    if "config.stash[xml_key]" not in src:
        _fail("_pytest.junitxml.xml_key", XUNIT2, "_pytest.junitxml.pytest_configure no longer stores "
              "its LogXML in config.stash[xml_key]")


def test_logxml_methods_take_the_calls_we_make():
    log_xml = _attr("_pytest.junitxml", "LogXML", XUNIT2)
    node_reporter = _member(log_xml, "node_reporter", "_pytest.junitxml.LogXML.node_reporter", XUNIT2)
    _bindable(node_reporter, "LogXML.node_reporter(report)", XUNIT2, None, object())
    add = _member(log_xml, "add_global_property", "_pytest.junitxml.LogXML.add_global_property", XUNIT2)
    _bindable(add, "LogXML.add_global_property(name, value)", XUNIT2, None, "name", "value")
    node_rep = _attr("_pytest.junitxml", "_NodeReporter", XUNIT2)
    append = _member(node_rep, "append", "_pytest.junitxml._NodeReporter.append", XUNIT2)
    _bindable(append, "_NodeReporter.append(element)", XUNIT2, None, ET.Element("system-out"))


def _report(nodeid: str, when: str, outcome: str = "passed", node: Any = None, **extra: Any) -> pytest.TestReport:
    rep = pytest.TestReport(nodeid=nodeid, location=(nodeid.split("::")[0], None, nodeid), keywords={},
                            outcome=outcome, longrepr="boom" if outcome == "failed" else None, when=when,
                            **extra)  # type: ignore[arg-type]
    if node is not None:
        rep.node = node  # type: ignore[attr-defined]
    return rep


def test_logxml_keys_testcases_on_report_node_and_writes_what_we_add(tmp_path):
    """The chain the plugin relies on, with pytest's own LogXML: ``node_reporter(rep)`` during the
    call report returns the testcase LogXML opened (keyed on ``(nodeid, rep.node)``), what is
    appended lands in it, and a hand-made report whose ``node`` is the worker that began the item
    completes that testcase instead of opening a second one."""
    log_xml = _attr("_pytest.junitxml", "LogXML", XUNIT2)
    path = tmp_path / "junit.xml"
    try:
        xml = log_xml(str(path), None, family="xunit2")
        xml.pytest_sessionstart()
    except TypeError as exc:  # this test's own use of LogXML, not the plugin's
        pytest.fail(f"LogXML(logfile, prefix, family=...) changed ({exc}); update this test's harness", pytrace=False)
    worker = object()  # stands in for an xdist WorkerController
    ran, lost = "models.json::ran", "models.json::lost"

    xml.pytest_runtest_logreport(_report(ran, "setup", node=worker))
    call = _report(ran, "call", node=worker)
    xml.pytest_runtest_logreport(call)
    reporter = xml.node_reporter(call)  # what Reporter._xunit2 does, after LogXML saw the report
    if reporter is not xml.node_reporters.get((ran, worker)):
        _fail("LogXML.node_reporter(report) keyed on (nodeid, report.node)", XUNIT2,
              "it no longer returns the testcase LogXML opened for this report; <system-out> would land "
              "in a new, empty testcase")
    out = ET.Element("system-out")
    out.text = "[pytest-madengine metrics]\nperformance=1"
    reporter.append(out)
    xml.add_global_property(f"{ran}::performance", "1")
    xml.pytest_runtest_logreport(_report(ran, "teardown", node=worker))

    # Reporter.pytest_sessionfinish: a model whose worker died after setup
    xml.pytest_runtest_logreport(_report(lost, "setup", node=worker))
    xml.pytest_runtest_logreport(_report(lost, "call", "failed", node=worker))
    xml.pytest_runtest_logreport(_report(lost, "teardown", node=worker))
    xml.pytest_sessionfinish()

    root = ET.parse(path).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    names = [c.get("name") for c in root.iter("testcase")]
    if sorted(names) != sorted(set(names)):
        _fail("report.node (set by hand on a made-up TestReport)",
              "plugin.py Reporter.pytest_sessionfinish", f"LogXML wrote duplicate testcases {names}: it no "
              "longer keys testcases on (nodeid, report.node)")
    if cases.get("ran") is None or cases["ran"].find("system-out") is None:
        _fail("LogXML.node_reporter(report).append(element)", XUNIT2,
              f"the appended <system-out> is missing from the testcase: {ET.tostring(root, 'unicode')}")
    if cases.get("lost") is None or cases["lost"].find("failure") is None:
        _fail("a hand-made TestReport with report.node", "plugin.py Reporter.pytest_sessionfinish",
              "the failing call report did not reach the testcase the worker opened")
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    if props.get(f"{ran}::performance") != "1":
        _fail("LogXML.add_global_property(name, value)", XUNIT2,
              f"the property is not written under <testsuite><properties>: {props}")


# --- _pytest.reports.TestReport, constructed by hand ---

SYNTH = "plugin.py Reporter.pytest_sessionfinish, failing selected models that never reported"


def test_private_testreport_is_the_public_one():
    private = _attr("_pytest.reports", "TestReport", SYNTH, "import pytest.TestReport instead")
    if private is not pytest.TestReport:
        _fail("_pytest.reports.TestReport", SYNTH, "it is no longer the class exported as pytest.TestReport",
              "import pytest.TestReport instead")


def test_testreport_constructor_takes_our_arguments():
    _bindable(pytest.TestReport.__init__, "TestReport(nodeid=, location=, keywords=, outcome=, longrepr=, when=)",
              SYNTH, None, nodeid="m.json::m", location=("m.json", None, "m"), keywords={}, outcome="failed",
              longrepr="not run", when="call")
    rep = _report("m.json::m", "call", "failed")
    for name, want in (("nodeid", "m.json::m"), ("when", "call"), ("outcome", "failed"), ("failed", True)):
        if getattr(rep, name, None) != want:
            _fail("TestReport(...) built by hand", SYNTH, f"report.{name} is {getattr(rep, name, None)!r}, not {want!r}")


def test_extra_report_attribute_survives_serialisation(request):
    """``rep.mad_result`` is set on the worker and read on the controller: xdist ships reports
    through the public ``pytest_report_to_serializable`` / ``pytest_report_from_serializable`` hooks."""
    config = request.config
    rep = _report("m.json::m", "call")
    rep.mad_result = {"model": "m", "status": "SUCCESS"}  # type: ignore[attr-defined]
    data = config.hook.pytest_report_to_serializable(config=config, report=rep)
    back = config.hook.pytest_report_from_serializable(config=config, data=data)
    if getattr(back, "mad_result", None) != rep.mad_result:  # type: ignore[attr-defined]
        _fail("an extra attribute on TestReport (report.mad_result)",
              "plugin.py pytest_runtest_makereport -> Reporter.pytest_runtest_logreport",
              "it no longer survives pytest_report_to_serializable/from_serializable, so xdist "
              "workers' results would be lost on the controller", "carry it in report.user_properties")


# --- pytest-xdist internals ---

@needs_xdist
def test_xdist_sets_report_node_and_crash_when():
    dsession = _attr("xdist.dsession", "DSession", "plugin.py Reporter")
    testreport = _source(_member(dsession, "worker_testreport", "xdist DSession.worker_testreport", "plugin.py"))
    if "rep.node = node" not in testreport:
        _fail("report.node (set by xdist's DSession.worker_testreport)",
              "plugin.py Reporter.pytest_runtest_logreport (self.started)",
              "xdist no longer records the worker on the report; a lost model's testcase would be duplicated")
    crash = _source(_member(dsession, "handle_crashitem", "xdist DSession.handle_crashitem", "plugin.py"))
    if 'when="???"' not in crash:
        _fail('report.when == "???" (xdist\'s crashed-worker report)', "plugin.py _report_result",
              "xdist's handle_crashitem no longer reports a crash with when='???'; a model whose worker "
              "crashed would get no FAILURE row")
    if "rep.node = worker" not in crash:
        _fail("report.node on xdist's crash report", "plugin.py Reporter.pytest_runtest_logreport",
              "handle_crashitem no longer sets rep.node")


@needs_xdist
def test_workerinput_is_how_xdist_marks_a_worker():
    where = "plugin.py pytest_configure/pytest_sessionstart, runplugins.register, slurm/ahead._worker_queue"
    is_worker = _attr("xdist", "is_xdist_worker", where)
    worker = types.SimpleNamespace(config=types.SimpleNamespace(workerinput={"workerid": "gw0"}))
    controller = types.SimpleNamespace(config=types.SimpleNamespace())
    if not (is_worker(worker) and not is_worker(controller)):
        _fail("hasattr(config, 'workerinput')", where, "xdist.is_xdist_worker no longer decides by "
              "config.workerinput", "follow xdist.is_xdist_worker")
    remote = importlib.import_module("xdist.remote")
    if "config.workerinput = workerinput" not in _source(remote):
        _fail("config.workerinput", where, "xdist.remote no longer sets config.workerinput on workers")


def _interactor() -> tuple[Any, list[Any]]:
    interactor_cls = _attr("xdist.remote", "WorkerInteractor", "slurm/ahead.py _worker_queue")
    execnet = pytest.importorskip("execnet")
    registered: list[Any] = []
    config = types.SimpleNamespace(
        workerinput={"workerid": "gw0", "testrunuid": "x", "workercount": 1},
        option=types.SimpleNamespace(debug=False),
        pluginmanager=types.SimpleNamespace(register=registered.append, get_plugins=lambda: set(registered)),
    )
    channel = types.SimpleNamespace(gateway=types.SimpleNamespace(
        execmodel=execnet.gateway_base.get_execmodel("thread")))
    try:
        return interactor_cls(config, channel), registered
    except Exception as exc:  # this test's stand-ins, not the plugin's use
        pytest.fail(f"xdist WorkerInteractor(config, channel) could not be built from stand-ins ({exc!r}); "
                    "update this test's harness", pytrace=False)


@needs_xdist
def test_worker_interactor_queue():
    where = "slurm/ahead.py _worker_queue, planning the items a worker was given but has not started"
    cls = _attr("xdist.remote", "WorkerInteractor", where)
    if cls.__name__ != "WorkerInteractor":
        _fail("type(plugin).__name__ == 'WorkerInteractor'", where, f"the class is now named {cls.__name__!r}")
    interactor, registered = _interactor()
    if interactor not in registered:
        _fail("config.pluginmanager.get_plugins() -> WorkerInteractor", where,
              "WorkerInteractor no longer registers itself as a plugin")
    torun = _member(interactor, "torun", "WorkerInteractor.torun", where)
    lock = _member(torun, "lock", "WorkerInteractor.torun.lock()", where)
    _member(interactor, "nextitem_index", "WorkerInteractor.nextitem_index", where)
    torun.put(3)
    torun.put(5)
    shutdown = _attr("xdist.remote", "Marker", where).SHUTDOWN
    torun.put(shutdown)
    try:
        ctx = lock()
        with ctx as queue:
            seen = list(queue)
    except Exception as exc:
        _fail("with WorkerInteractor.torun.lock() as queue", where, f"it is no longer a context manager "
              f"yielding the pending queue ({exc!r})")
    if [i for i in seen if isinstance(i, int)] != [3, 5]:
        _fail("WorkerInteractor.torun.lock() yielding item indices", where, f"the queue now holds {seen!r}")
    interactor.nextitem_index = torun.get()
    if interactor.nextitem_index != 3:
        _fail("WorkerInteractor.nextitem_index", where, "torun.get() no longer hands out item indices")

    try:
        from pytest_madengine.plugins.ahead import _worker_queue
    except ImportError:
        pytest.skip("pytest_madengine.plugins.ahead._worker_queue is gone")
    config = types.SimpleNamespace(workerinput={}, pluginmanager=types.SimpleNamespace(get_plugins=lambda: [interactor]))
    got = _worker_queue(config)  # type: ignore[arg-type]
    if got != [3, 5]:
        _fail("WorkerInteractor.torun / nextitem_index", where, f"_worker_queue read {got!r} from a worker whose "
              "next item is 3 and queue is [5, SHUTDOWN]; expected [3, 5]")


@needs_xdist
def test_xdist_hooks_we_implement():
    spec = _attr("xdist.newhooks", "pytest_xdist_node_collection_finished",
                 "plugin.py Reporter.pytest_xdist_node_collection_finished")
    params = set(inspect.signature(spec).parameters)
    if not {"node", "ids"} <= params:
        _fail("the pytest_xdist_node_collection_finished(node, ids) hook",
              "plugin.py Reporter.pytest_xdist_node_collection_finished",
              f"its spec now takes {sorted(params)}; pluggy rejects an implementation with other argument names")


def test_pytest_html_hook_we_implement():
    hooks = pytest.importorskip("pytest_html.hooks")
    spec = _member(hooks, "pytest_html_results_summary", "pytest_html_results_summary", "summary.py HtmlSummary")
    params = set(inspect.signature(spec).parameters)
    if not {"prefix", "summary", "postfix", "session"} <= params:
        _fail("pytest_html_results_summary(prefix, summary, postfix, session)", "summary.py HtmlSummary",
              f"its spec now takes {sorted(params)}")


# --- terminal.py: the terminal reporter and the capture manager ---

TERMINAL = "terminal.py writer, printing progress and live output past output capture"


def test_capturemanager_global_and_fixture_disabled(request):
    capman_cls = _attr("_pytest.capture", "CaptureManager", TERMINAL)
    method = _member(capman_cls, "global_and_fixture_disabled", "CaptureManager.global_and_fixture_disabled()",
                     TERMINAL)
    _bindable(method, "CaptureManager.global_and_fixture_disabled()", TERMINAL, None)
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if capman is None:
        pytest.skip("capture is disabled in this run (-p no:capture)")
    if not isinstance(capman, capman_cls):
        _fail('config.pluginmanager.get_plugin("capturemanager")', TERMINAL,
              f"the plugin of that name is now a {type(capman).__name__}")
    ctx = capman.global_and_fixture_disabled()
    if not isinstance(ctx, contextlib.AbstractContextManager):
        _fail("CaptureManager.global_and_fixture_disabled()", TERMINAL, "it no longer returns a context manager")
    with ctx:
        pass


def test_terminalreporter_plugin(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        pytest.skip("no terminal reporter in this run (-p no:terminal)")
    if not isinstance(reporter, pytest.TerminalReporter):
        _fail('config.pluginmanager.get_plugin("terminalreporter")', TERMINAL,
              f"the plugin of that name is now a {type(reporter).__name__}")
    for name in ("write_line", "write", "flush", "section"):
        _member(pytest.TerminalReporter, name, f"TerminalReporter.{name}", TERMINAL + " and plugin.py Reporter")
    _bindable(pytest.TerminalReporter.write, "TerminalReporter.write(text)", TERMINAL, None, "x")
    _bindable(pytest.TerminalReporter.write_line, "TerminalReporter.write_line(text)", TERMINAL, None, "x")
    _bindable(pytest.TerminalReporter.flush, "TerminalReporter.flush()", TERMINAL, None)


# --- Config and Session attributes read in plugin.py ---

CONFIGURE = "plugin.py pytest_configure"


def test_issue_config_time_warning():
    method = _member(pytest.Config, "issue_config_time_warning", "Config.issue_config_time_warning", CONFIGURE)
    _bindable(method, "config.issue_config_time_warning(warning, stacklevel=2)", CONFIGURE,
              None, UserWarning("x"), stacklevel=2)


def test_config_args_and_args_source(request):
    where = CONFIGURE + ", which replaces the test paths with the models files under --mad-tags"
    args_source = _member(pytest.Config, "ArgsSource", "pytest.Config.ArgsSource", where)
    _member(args_source, "ARGS", "pytest.Config.ArgsSource.ARGS", where)
    config = request.config
    if not isinstance(getattr(config, "args_source", None), args_source):
        _fail("config.args_source", where, f"it is now {getattr(config, 'args_source', '<missing>')!r}")
    args = getattr(config, "args", None)
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        _fail("config.args (assigned a list of str)", where, f"config.args is now {args!r}")
    if "self.config.args" not in _source(pytest.Session.perform_collect):
        _fail("config.args =", where, "Session.perform_collect no longer collects config.args, so "
              "assigning it in pytest_configure would not change what is collected")


def test_option_dests_we_read(pytester):
    config = pytester.parseconfig("-p", "no:madengine", "-p", "no:cacheprovider")
    dests = {"help": CONFIGURE, "version": CONFIGURE, "collectonly": "plugin.py Reporter.pytest_runtestloop",
             "setuponly": "plugin.py Reporter.pytest_runtestloop", "setupplan": "plugin.py Reporter.pytest_runtestloop",
             "continue_on_collection_errors": "plugin.py Reporter.pytest_sessionfinish", "capture": "items.py runtest"}
    for dest, where in dests.items():
        if not hasattr(config.option, dest):
            _fail(f"config.option.{dest}", where, f"no command-line option has dest {dest!r} any more")
    if xdist is not None and config.getoption("dist", None) != "no":
        _fail('config.getoption("dist", "no")', CONFIGURE + " (_check_tags_here only on an xdist controller)",
              f"xdist's --dist default is now {config.getoption('dist', None)!r}, not 'no'")


def test_session_should_stop_and_fail():
    for name in ("shouldfail", "shouldstop"):
        _member(pytest.Session, name, f"session.{name}", "plugin.py Reporter.pytest_sessionfinish")


def test_mangle_matches_pytest():
    mangle_test_address = _attr("_pytest.junitxml", "mangle_test_address", "junit_results.py mangle (a copy)")
    try:
        from pytest_madengine.results.junit import mangle
    except ImportError:
        pytest.skip("pytest_madengine.results.junit.mangle is gone")
    for nodeid in ("models.json::m", "scripts/x/get_models_json.py::a[ctx.ubuntu.amd]",
                   "dir/models.json::m[x::y/z.py]", "t/test_a.py::TestC::test_b[1-2]"):
        names = mangle_test_address(nodeid)
        want = (".".join(names[:-1]), names[-1])
        if mangle(nodeid) != want:
            _fail("a copy of _pytest.junitxml.mangle_test_address", "junit_results.py mangle",
                  f"for {nodeid!r} pytest now writes classname/name {want}, the copy gives {mangle(nodeid)}; "
                  "JUnit read-back (merge, baseline) would miss results")


# --- the same calls, in a real pytest run ---

def test_whole_chain_in_a_real_run(pytester):
    """A conftest making plugin.py's private calls at the same hook points: pytest_configure
    replacing config.args, a trylast logreport adding <system-out> and suite properties through
    xml_key, a tryfirst sessionfinish sending a hand-made TestReport before LogXML writes."""
    pytester.makepyfile(test_chosen="def test_ok():\n    pass\n",
                        test_other="def test_not_collected():\n    raise AssertionError('config.args ignored')\n")
    pytester.makeconftest(textwrap.dedent("""
        import xml.etree.ElementTree as ET
        import pytest

        def pytest_configure(config):
            if not hasattr(config, "workerinput"):
                config.issue_config_time_warning(UserWarning("configure-time warning"), stacklevel=2)
            if config.args_source != pytest.Config.ArgsSource.ARGS:
                config.args = [str(config.rootpath / "test_chosen.py")]

        @pytest.hookimpl(trylast=True)
        def pytest_runtest_logreport(report):
            if report.when != "call" or report.nodeid.endswith("lost"):
                return
            from _pytest.junitxml import xml_key
            xml = pytest_runtest_logreport.config.stash.get(xml_key, None)
            xml.add_global_property(report.nodeid + "::performance", "42")
            out = ET.Element("system-out")
            out.text = "metrics here"
            xml.node_reporter(report).append(out)

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            from _pytest.reports import TestReport
            for when, outcome in (("call", "failed"), ("teardown", "passed")):
                rep = TestReport(nodeid="test_chosen.py::lost", location=("test_chosen.py", None, "lost"),
                                 keywords={}, outcome=outcome, longrepr="not run" if outcome == "failed" else None,
                                 when=when)
                session.config.hook.pytest_runtest_logreport(report=rep)

        def pytest_sessionstart(session):
            pytest_runtest_logreport.config = session.config
    """))
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_inprocess("-p", "no:madengine", "-p", "no:cacheprovider", "-o", "junit_family=xunit2",
                                          f"--junitxml={junit}")
    text = result.stdout.str()
    where = "plugin.py pytest_configure / Reporter (the chain together)"
    if "config.args ignored" in text or "test_not_collected" in text:
        _fail("config.args = [...] in pytest_configure", CONFIGURE, "pytest collected its own arguments, not "
              f"the assigned ones:\n{text}")
    if "configure-time warning" not in text:
        _fail("config.issue_config_time_warning", CONFIGURE, f"the warning was not shown:\n{text}")
    if not junit.exists():
        _fail("_pytest.junitxml", where, f"no JUnit file was written:\n{text}")
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    if cases.get("test_ok") is None or cases["test_ok"].find("system-out") is None:
        _fail("xml_key / LogXML.node_reporter(report).append", XUNIT2,
              f"<system-out> is missing from the testcase: {ET.tostring(root, 'unicode')}\n{text}")
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    if props.get("test_chosen.py::test_ok::performance") != "42":
        _fail("LogXML.add_global_property", XUNIT2, f"the suite property is missing: {props}\n{text}")
    if cases.get("lost") is None or cases["lost"].find("failure") is None:
        _fail("a hand-made TestReport sent from a tryfirst pytest_sessionfinish", SYNTH,
              f"it did not become a failed testcase before LogXML wrote the file: {ET.tostring(root, 'unicode')}")
