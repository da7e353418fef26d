"""Model results back out of JUnit files written by pytest-madengine, in either form.

* xunit1: properties inside each ``<testcase>``;
* xunit2: suite-level properties named ``<nodeid>::<name>`` and, in the testcase's
  ``<system-out>``, a ``[pytest-madengine metrics]`` block of ``name=value`` lines.

A model testcase without our values (an xdist worker that died under xunit1) still yields
a FAILURE result from its failure message, so it is not lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import ParseError

from junitparser import JUnitXml, JUnitXmlError, Properties, Property, SystemOut, TestCase, TestSuite

from pytest_madengine.errors import MadError
from pytest_madengine.results.metrics import is_reserved_extra_name
from pytest_madengine.results.result import FAILURE, SKIPPED, SUCCESS, ModelResult, Row

METRICS_HEADER = "[pytest-madengine metrics]"

# Properties that are fields of ModelResult; everything else goes back into ``properties``.
_FIELDS = {"model", "status", "reason", "tags", "n_gpus", "executor", "log", "gpus", "docker_image",
           "test_duration", "build_duration", "performance", "metric", "warning", "args",
           "training_precision", "docker_file", "base_docker", "gpu_architecture", "dataname", "runtime_ngpus",
           "docker_sha", "nnodes", "launcher"}


class JUnitReadError(MadError):
    """A JUnit file cannot be read or is not JUnit XML."""


@dataclass(frozen=True)
class CaseResult:
    """One model testcase read back: its result and the suite's host (perf.csv machine_name)."""

    result: ModelResult
    hostname: str
    classname: str
    name: str


def read_xml(path: Path) -> JUnitXml:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise JUnitReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise JUnitReadError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    # JUnit files never need a DTD; refusing them closes external entities (a file of this host
    # read into a merged report) and entity expansion bombs, whichever XML parser junitparser
    # uses (lxml resolves local entities by default).
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise JUnitReadError(f"{path}: a DOCTYPE or entity declaration is not allowed in a JUnit file")
    try:
        return JUnitXml.fromstring(data.decode("utf-8", errors="replace"))
    except FileNotFoundError:
        raise JUnitReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise JUnitReadError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except ParseError as exc:
        raise JUnitReadError(f"{path}: not well-formed XML: {exc}") from None
    except JUnitXmlError as exc:
        raise JUnitReadError(f"{path}: not a JUnit file (root must be <testsuites> or <testsuite>): {exc}") from None
    except Exception as exc:  # lxml raises its own XMLSyntaxError when installed
        raise JUnitReadError(f"{path}: cannot parse: {exc}") from None


def mangle(nodeid: str) -> tuple[str, str]:
    """pytest's (classname, name) for a nodeid (``_pytest.junitxml.mangle_test_address``)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def parse_metrics_block(text: str) -> list[tuple[str, str]] | None:
    """The ``name=value`` lines after ``[pytest-madengine metrics]``; None without the block.
    A line without ``=`` continues the previous value (a value that held a newline)."""
    if METRICS_HEADER not in text:
        return None
    props: list[tuple[str, str]] = []
    for line in text.split(METRICS_HEADER, 1)[1].splitlines():
        if not line:
            continue
        name, eq, value = line.partition("=")
        if eq:
            props.append((name, value))
        elif props:
            props[-1] = (props[-1][0], props[-1][1] + "\n" + line)
    return props


def _suite_props_by_case(suite: TestSuite) -> dict[tuple[str, str], list[tuple[str, str]]]:
    grouped: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for prop in suite.properties():  # type: ignore[no-untyped-call]  # junitparser is untyped
        name = prop.name or ""
        if "::" not in name:
            continue
        nodeid, _, key = name.rpartition("::")
        if "::" not in nodeid:
            continue
        grouped.setdefault(mangle(nodeid), []).append((key, prop.value or ""))
    return grouped


def case_properties(case: TestCase, suite_props: dict[tuple[str, str], list[tuple[str, str]]]) -> list[tuple[str, str]] | None:
    """Our values for one testcase, whichever form they were written in; None if it has none."""
    for out in case.iterchildren(SystemOut):  # type: ignore[no-untyped-call]
        block = parse_metrics_block(out.text or "")
        if block is not None:
            return block
    own = [(p.name or "", p.value or "") for props in case.iterchildren(Properties)  # type: ignore[no-untyped-call]
           for p in props.iterchildren(Property)]
    if any(k == "model" for k, _ in own):
        return own
    return suite_props.get((case.classname or "", case.name or ""))


def _looks_like_model(case: TestCase) -> bool:
    cls = case.classname or ""
    return cls.endswith(".json") or cls.endswith("get_models_json")


def _outcome(case: TestCase) -> tuple[str, str]:
    for res in case.result:
        kind = type(res).__name__
        if kind in ("Failure", "Error"):
            text = (res.message or res.text or "").strip()
            return FAILURE, text.splitlines()[0] if text else kind.lower()
        if kind == "Skipped":
            return SKIPPED, res.message or ""
    return SUCCESS, ""


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _split_extra(key: str, rows: Iterable[str]) -> tuple[str, str] | None:
    """``(column, row)`` when ``key`` is an extra-column property ``<column>:<row>`` of one of
    ``rows``; None otherwise. Column and row names may both hold ``:``, so each split is tried,
    leftmost first; a column name that a ``multiple_results`` column can never have (a perf.csv
    column, ``baseline``, ``delta_pct``: :func:`~pytest_madengine.metrics.is_reserved_extra_name`)
    is not one, so the baseline's ``delta_pct:<row>`` stays a plain property."""
    names = set(rows)
    at = key.find(":")
    while at > 0:
        column, row = key[:at], key[at + 1:]
        if row in names and not is_reserved_extra_name(column):
            return column, row
        at = key.find(":", at + 1)
    return None


def result_from_properties(props: Iterable[tuple[str, str]], default_name: str = "",
                           outcome: str = "", message: str = "") -> ModelResult:
    """A ModelResult from ``junit_properties`` output (the inverse, as far as JUnit keeps it).

    ``<column>:<row>`` properties of a known row (one with ``performance:<row>`` /
    ``metric:<row>``, or the model's only row) go back into that row's ``extra``, in order;
    any other property not a ModelResult field goes to ``properties``, as it was.
    """
    plain: dict[str, str] = {}
    per_row: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    extra: dict[str, str] = {}
    for key, value in props:
        if key == "warning":
            warnings.append(value)
            continue
        head, colon, row = key.partition(":")
        if colon and head in ("performance", "metric"):
            per_row.setdefault(row, {})[head] = value
            continue
        if key in _FIELDS:
            plain[key] = value
        else:
            extra[key] = value
    model = plain.get("model") or default_name
    row_names = list(per_row) if per_row else [model] if plain.get("performance") else []
    row_extra: dict[str, dict[str, str]] = {}
    if row_names:
        for key in [k for k in extra if ":" in k]:
            split = _split_extra(key, row_names)
            if split is not None:
                row_extra.setdefault(split[1], {})[split[0]] = extra.pop(key)
    status = plain.get("status") or outcome or FAILURE
    regressed = set(filter(None, extra.get("regressed", "").split(",")))

    def row_status(name: str) -> str:
        if status == SUCCESS:
            return SUCCESS
        if regressed:
            return FAILURE if name in regressed else SUCCESS
        return status

    rows: list[Row] = []
    if per_row:
        for name, vals in per_row.items():
            number = _float(vals.get("performance", ""))
            rows.append(Row(name, number, vals.get("metric", ""), row_status(name), row_extra.get(name, {})))
    elif plain.get("performance"):
        number = _float(plain["performance"])
        rows.append(Row(model, number, plain.get("metric", ""), row_status(model), row_extra.get(model, {})))
    elif status == SKIPPED:
        rows.append(Row(model, None, "", SKIPPED))
    n_gpus = plain.get("n_gpus", "0")
    runtime = plain.get("runtime_ngpus", "")
    return ModelResult(
        model=model, status=status, reason=plain.get("reason", message if status != SUCCESS else ""),
        rows=rows, warnings=warnings, log=plain.get("log", ""), executor=plain.get("executor", ""),
        tags=tuple(t for t in plain.get("tags", "").split(",") if t),
        n_gpus=int(n_gpus) if n_gpus.lstrip("-").isdigit() else 0,
        gpus=tuple(int(g) for g in plain.get("gpus", "").split(",") if g.strip().isdigit()),
        runtime_ngpus=int(runtime) if runtime.isdigit() else None,
        args=plain.get("args", ""), duration=_float(plain.get("test_duration", "")) or 0.0,
        build_duration=_float(plain.get("build_duration", "")) or 0.0, image=plain.get("docker_image", ""),
        dockerfile=plain.get("docker_file", ""), base_docker=plain.get("base_docker", ""),
        gpu_architecture=plain.get("gpu_architecture", ""), training_precision=plain.get("training_precision", ""),
        dataname=plain.get("dataname", ""), docker_sha=plain.get("docker_sha", ""),
        nnodes=int(plain["nnodes"]) if plain.get("nnodes", "").isdigit() else 1, launcher=plain.get("launcher", ""),
        properties=dict(extra),
    )


def iter_results(xml: JUnitXml) -> Iterator[CaseResult]:
    for suite in xml:
        suite_props = _suite_props_by_case(suite)
        hostname = suite.hostname or ""
        for case in suite:
            outcome, message = _outcome(case)
            props = case_properties(case, suite_props)
            if props is None:
                if not (_looks_like_model(case) and outcome == FAILURE):
                    continue  # a plain pytest test, or a model case that carries nothing of ours
                props = []
            result = result_from_properties(props, case.name or "", outcome, message)
            yield CaseResult(result, hostname, case.classname or "", case.name or "")


def read_results(path: Path) -> list[ModelResult]:
    return [c.result for c in iter_results(read_xml(path))]
