"""Bad input, fuzzed with hypothesis: every input ends in a result, a failure naming what is
wrong (file, entry, field, key), or a usage error; never an internal traceback or a hang.
Example counts are fixed (``EXAMPLES``) so CI time stays bounded; the README gives the total."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_madengine import context as ctx_mod
from pytest_madengine.errors import ContextError, MadError, MetricsError, ModelsFileError, SelectionError
from pytest_madengine.models import load_path, parse_tags, run_options
from pytest_madengine.results.junit import JUnitReadError, read_results
from pytest_madengine.results.metrics import PerfScanner, parse_multiple_results
from pytest_madengine.results.report import spreadsheet_safe

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])

FIELDS = ["name", "dockerfile", "scripts", "n_gpus", "tags", "args", "timeout", "env_vars", "multiple_results",
          "skip_gpu_arch", "url", "data", "distributed", "slurm", "additional_docker_run_options", "dockercontext",
          "log_error_patterns", "gen_sys_env_details"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
entries = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


@FUZZ
@given(data=st.lists(st.one_of(entries, json_values), max_size=6))
def test_models_json_entries(tmp_path: Path, data: list[object]) -> None:
    (tmp_path / "run.sh").write_text("echo\n")
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data, allow_nan=True))
    try:
        loaded = load_path(path, tmp_path)
    except ModelsFileError as exc:
        assert "models.json" in str(exc)
        return
    for broken in loaded.broken:  # each names its file and entry
        assert "models.json" in broken.message and "entry" in broken.message


@FUZZ
@given(raw=st.binary(max_size=300))
def test_models_json_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "models.json"
    path.write_bytes(raw)
    try:
        load_path(path, tmp_path)
    except ModelsFileError as exc:
        assert "models.json" in str(exc)


@FUZZ
@given(text=st.one_of(st.text(max_size=120), st.builds(json.dumps, json_values)))
def test_context_text(text: str) -> None:
    try:
        ctx_mod.build([("text", text)])
    except ContextError as exc:
        assert str(exc)


YAML_SNIPPETS = st.sampled_from([
    "a: !!python/object/apply:os.system ['true']\n", "a: &x [1]\nb: *x\n", "!!binary 'AAAA'\n", "- 1\n- 2\n",
    "docker_env_vars: {A: !!float 1}\n", "a: b: c\n", "? [1]\n: 2\n", "%YAML 1.1\n---\na: 1\n", "\t\n",
    "gpu_vendor: NOPE\n", "timeout: -5\n", "docker_mounts: {x: [1]}\n",
])


@FUZZ
@given(text=st.one_of(YAML_SNIPPETS, st.text(max_size=120)))
def test_context_yaml_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ctx.yaml"
    path.write_text(text)
    try:
        ctx_mod.build([("file", str(path))])
    except ContextError as exc:
        assert "ctx.yaml" in str(exc) or "context key" in str(exc)  # the file, or the merged key


def test_yaml_billion_laughs_ends_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "ctx.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ContextError, match="expands to more than 100,000 values through YAML aliases"):
        ctx_mod.build([("file", str(path))])
    assert time.monotonic() - start < 10


@FUZZ
@given(text=st.text(max_size=80))
def test_tag_expressions(text: str) -> None:
    try:
        parse_tags([text])
    except SelectionError as exc:
        assert "--mad-tags" in str(exc)


@FUZZ
@given(text=st.text(max_size=120))
def test_docker_run_options(text: str) -> None:
    try:
        run_options.parse(text, {}).sdk_kwargs()
    except run_options.DockerRunOptionsError as exc:
        assert str(exc).startswith("additional_docker_run_options")


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=200), st.builds(lambda v, m: f"performance: {v} {m}",
                                                                  st.text(max_size=20), st.text(max_size=20))),
                      max_size=20))
def test_performance_lines(lines: list[str]) -> None:
    scanner = PerfScanner()
    for line in lines:
        scanner.feed(line)
    for found in scanner.lines:
        assert found.value is None or found.value == found.value  # a number, or None: never raises


@FUZZ
@given(raw=st.one_of(st.binary(max_size=400), st.builds(
    lambda rows: "model,performance,metric,extra\n" + "\n".join(",".join(r) for r in rows),
    st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12), min_size=1,
                      max_size=5), max_size=6))))
def test_multiple_results_csv(tmp_path: Path, raw: bytes | str) -> None:
    path = tmp_path / "perf_m.csv"
    if isinstance(raw, str):
        path.write_text(raw)
    else:
        path.write_bytes(raw)
    try:
        parse_multiple_results(path, "m")
    except MetricsError as exc:
        assert "perf_m.csv" in str(exc)


def test_a_one_megabyte_cell_and_nul_bytes(tmp_path: Path) -> None:
    path = tmp_path / "perf_m.csv"
    path.write_bytes(b"model,performance,metric,note\nbig,1,x," + b"a" * (1 << 20) + b"\nnul,2\x00,x,y\n")
    try:
        rows = parse_multiple_results(path, "m")
    except MetricsError:
        return
    assert rows


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_junit_inputs(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "junit.xml"
    path.write_bytes(raw)
    try:
        read_results(path)
    except JUnitReadError as exc:
        assert "junit.xml" in str(exc)


@pytest.mark.parametrize("doc", [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<testsuites><testsuite name="s"><testcase name="m" classname="models.json"/></testsuite></testsuites>',
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
    b'<testsuites><testsuite name="&d;"/></testsuites>',
], ids=["external-entity", "billion-laughs"])
def test_junit_entities_are_refused(tmp_path: Path, doc: bytes) -> None:
    path = tmp_path / "junit.xml"
    path.write_bytes(doc)
    with pytest.raises(JUnitReadError, match="DOCTYPE or entity declaration is not allowed"):
        read_results(path)


@FUZZ
@given(text=st.text(max_size=40))
def test_perf_csv_cells_never_start_a_formula(text: str) -> None:
    out = spreadsheet_safe(text)
    if out and out[0] in "=+-@":
        float(out)  # only plain numbers keep a leading sign


def test_every_error_is_one_of_ours() -> None:
    assert issubclass(ModelsFileError, MadError) and issubclass(ContextError, MadError)
