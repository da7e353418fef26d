"""Merge JUnit files of several runs (shards, hosts, reruns) and rebuild their perf.csv."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from junitparser import JUnitXml

from pytest_madengine.results import report
from pytest_madengine.results.junit import iter_results, read_xml


@dataclass(frozen=True)
class MergeSummary:
    files: int
    suites: int
    cases: int
    perf_rows: int


def merge_xml(xmls: Sequence[JUnitXml]) -> JUnitXml:
    """One ``<testsuites>`` holding every suite as it was: suite-level properties (xunit2),
    testcase properties (xunit1) and system-out blocks all stay with their testcases."""
    merged = JUnitXml()
    for xml in xmls:
        for suite in xml:
            merged.add_testsuite(suite)
    return merged


def perf_rows(xml: JUnitXml) -> list[dict[str, str]]:
    """perf.csv rows (madengine columns) for every model testcase, in file order."""
    rows: list[dict[str, str]] = []
    for case in iter_results(xml):
        meta = {"machine_name": case.hostname, "git_commit": str(case.result.properties.get("git_commit", ""))}
        rows += report.perf_rows(case.result, meta)
    return rows


def merge_files(paths: Sequence[Path], out: Path | None, perf_csv: Path | None) -> MergeSummary:
    """Read every file first (a bad one raises JUnitReadError naming it, before anything is
    written), then write the merged JUnit and/or a fresh perf.csv."""
    xmls = [read_xml(Path(p)) for p in paths]
    merged = merge_xml(xmls)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        merged.write(str(out))
    rows = perf_rows(merged)
    if perf_csv is not None:
        Path(perf_csv).unlink(missing_ok=True)  # rebuilt, not appended to
        if rows:
            report.append_perf_csv(Path(perf_csv), rows)
        else:
            Path(perf_csv).write_text(",".join(report.PERF_COLUMNS) + "\n", encoding="utf-8")
    suites = sum(1 for _ in merged)
    cases = sum(1 for suite in merged for _ in suite)
    return MergeSummary(len(xmls), suites, cases, len(rows))
