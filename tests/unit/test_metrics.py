"""Unit tests for pytest_madengine.metrics: madengine-compatible parsing that never lies."""

from __future__ import annotations

import io
import math
import random
import re

import pytest

from pytest_madengine.errors import MetricsError, UsageError
from pytest_madengine.results.metrics import (
    EXTRA_PREFIX,
    HF_METRIC,
    MADENGINE_HF_PATTERN,
    MADENGINE_PERFORMANCE_PATTERN,
    PERF_CSV_COLUMNS,
    RESERVED_EXTRA_NAMES,
    Aggregate,
    PerfLine,
    PerfScanner,
    ResultRow,
    aggregate,
    aggregation_rule,
    choose_result,
    direction,
    find_performance_lines,
    is_reserved_extra_name,
    parse_multiple_results,
    parse_number,
    safe_extra,
)


def one(line: str) -> PerfLine | None:
    found = find_performance_lines([line])
    assert len(found) <= 1
    return found[0] if found else None


# --------------------------------------------------------------------------------------
# Performance lines: every variant madengine 2.x accepts (its own unit tests' cases)
# --------------------------------------------------------------------------------------

MADENGINE_CASES = [
    ("performance: 12345 samples_per_second", "12345", "samples_per_second"),
    ("performance: 100.5 samples_per_second", "100.5", "samples_per_second"),
    ("performance: 1.23e+4 samples_per_second", "1.23e+4", "samples_per_second"),
    ("performance: 1.23e-4 samples_per_second", "1.23e-4", "samples_per_second"),
    ("performance: 1.23E+4 samples_per_second", "1.23E+4", "samples_per_second"),
    ("performance: 0 samples_per_second", "0", "samples_per_second"),
    ("performance: 123 metric123", "123", "metric123"),
    ("performance: 123 _metric", "123", "_metric"),
    ("performance: 14164/s samples_per_second", "14164", "samples_per_second"),
    ("performance: 14164/s, samples_per_second", "14164", "samples_per_second"),
    ("performance: 14164.5/s, samples_per_second", "14164.5", "samples_per_second"),
    ("performance: 100.5, samples_per_second", "100.5", "samples_per_second"),
    ("performance: 123,/s metric", "123", "metric"),
    ("performance: 123, /s metric", "123", "metric"),
    ("performance: +123.45 samples_per_second", "+123.45", "samples_per_second"),
    ("performance: -123.45 samples_per_second", "-123.45", "samples_per_second"),
    ("performance: .5 samples_per_second", ".5", "samples_per_second"),
    ("performance: 1234.5 samples/sec", "1234.5", "samples/sec"),
    ("performance: 500.0 tokens/sec", "500.0", "tokens/sec"),
    ("performance: 500.0/s tokens/sec", "500.0", "tokens/sec"),
    ("performance: 1.2e3 tokens/sec", "1.2e3", "tokens/sec"),
    ("performance: 1. x", "1.", "x"),
    ("performance:\t7\tm", "7", "m"),
    ("performance:   42    spaced_metric   ", "42", "spaced_metric"),
]


@pytest.mark.parametrize("line,raw,metric", MADENGINE_CASES)
def test_madengine_variants(line, raw, metric):
    p = one(line)
    assert p is not None
    assert (p.raw_value, p.metric, p.line_no) == (raw, metric, 1)
    assert p.value == float(raw)
    # and madengine's own regex agrees
    m = re.search(MADENGINE_PERFORMANCE_PATTERN, line)
    assert (m.group(1).strip(), m.group(2).strip()) == (raw, metric)


@pytest.mark.parametrize("line,raw,metric", [
    ("[rank0]: performance: 14164 samples_per_second", "14164", "samples_per_second"),
    ("2026-01-01 12:00:00 INFO performance: 3.5 it/s", "3.5", "it/s"),
    ("myperformance: 1 x", "1", "x"),  # madengine's pattern has no word boundary
    ("performance: 7 tokens/sec, more text", "7", "tokens/sec"),
    ("performance: 8 a,b", "8", "a"),  # metric stops at a comma
    ("performance: 5 ms latency", "5", "ms"),  # the first word after the value is the metric
])
def test_leading_and_trailing_text(line, raw, metric):
    p = one(line)
    assert (p.raw_value, p.metric) == (raw, metric)
    m = re.search(MADENGINE_PERFORMANCE_PATTERN, line)
    assert (m.group(1), m.group(2)) == (raw, metric)


@pytest.mark.parametrize("line", [
    "throughput: 100.5 samples_per_second",
    "performance: 100.5",  # no metric
    "performance:100 x",  # madengine needs whitespace after the colon
    "Performance: 100 x",  # case-sensitive
    "PERFORMANCE: 100 x",
    "performance: 1.2.3 x",
    "performance: 12abc x",
    "performance: abc x",
    "performance: nanoseconds x",  # not the token nan
    "performance: information x",
    "performance: 1e x",
    "",
    "no colon performance 1 x",
])
def test_not_a_performance_line(line):
    assert one(line) is None
    if not re.search(r"(?i)performance: *n", line):
        assert re.search(MADENGINE_PERFORMANCE_PATTERN, line) is None


def test_atomic_regex_matches_exactly_what_madengine_matches():
    """Our linear-time pattern and madengine's verbatim pattern agree on random lines."""
    from pytest_madengine.results.metrics import _PERF_RE

    ref = re.compile(MADENGINE_PERFORMANCE_PATTERN)
    alphabet = "0123456789.eE+-/s, \tx:NAa"
    rnd = random.Random(1234)
    for _ in range(20000):
        s = rnd.choice(["performance:", "xperformance: ", "performance: 1"]) + "".join(
            rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        a, b = ref.search(s), _PERF_RE.search(s)
        assert (a is None) == (b is None), s
        if a is not None:
            assert (a.span(), a.group(1), a.group(2)) == (b.span(), b.group("num"), b.group("metric")), s


@pytest.mark.parametrize("line", [
    "performance: " + "1" * 200_000,
    "performance: " + "1" * 100_000 + "." + "2" * 100_000,
    "performance: 1" + " " * 200_000,
    "performance:" + " " * 200_000 + "x",
])
def test_pathological_lines_are_fast(line):
    import time

    t0 = time.perf_counter()
    sc = PerfScanner()
    sc.feed(line)
    assert time.perf_counter() - t0 < 2.0  # madengine's pattern needs minutes for the first one


# --------------------------------------------------------------------------------------
# Non-numbers: failures, never zero
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,raw,metric", [
    ("performance: NA samples_per_second", "NA", "samples_per_second"),
    ("performance: N/A samples_per_second", "N/A", "samples_per_second"),
    ("performance: n/a tokens/sec", "n/a", "tokens/sec"),
    ("performance: nan x", "nan", "x"),
    ("performance: NaN x", "NaN", "x"),
    ("performance: -nan x", "-nan", "x"),
    ("performance: inf x", "inf", "x"),
    ("performance: -inf x", "-inf", "x"),
    ("performance: Infinity x", "Infinity", "x"),
    ("performance: None samples_per_second", "None", "samples_per_second"),
    ("performance: null x", "null", "x"),
    ("performance: NA/s, samples_per_second", "NA", "samples_per_second"),
    ("performance: NA, samples_per_second", "NA", "samples_per_second"),
    ("log: performance: NA x", "NA", "x"),
])
def test_non_number_values_come_back_as_none(line, raw, metric):
    p = one(line)
    assert p == PerfLine(None, raw, metric, 1)


@pytest.mark.parametrize("raw", ["1e999", "-1e999", "1E400"])
def test_overflowing_number_is_not_a_measurement(raw):
    p = one(f"performance: {raw} samples_per_second")
    assert p.value is None and p.raw_value == raw


def test_first_match_in_a_line_wins():
    assert one("performance: NA x performance: 5 y").raw_value == "NA"
    assert one("performance: 5 y performance: NA x").value == 5.0


# --------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------

def test_line_numbers_and_order():
    text = "start\nperformance: 1 a\nnoise\nperformance: NA b\nperformance: 3 c\n"
    found = find_performance_lines(io.StringIO(text))
    assert found == [PerfLine(1.0, "1", "a", 2), PerfLine(None, "NA", "b", 4), PerfLine(3.0, "3", "c", 5)]


def test_generator_input_is_consumed_lazily():
    consumed = 0

    def gen():
        nonlocal consumed
        for i in range(300_000):
            consumed += 1
            yield f"step {i} loss 0.1\n" if i != 150_000 else "performance: 99 tok/s\n"

    found = find_performance_lines(gen())
    assert consumed == 300_000
    assert found == [PerfLine(99.0, "99", "tok/s", 150_001)]


def test_limit():
    lines = [f"performance: {i} x" for i in range(10)]
    assert [p.raw_value for p in find_performance_lines(lines, limit=3)] == ["0", "1", "2"]


def test_scanner_is_bounded_and_counts():
    sc = PerfScanner()
    for i in range(1500):
        sc.feed(f"performance: {i} samples_per_second\n")
    assert len(sc.lines) == 1000
    assert sc.count == 1500
    assert sc.truncated
    assert sc.lines[0].raw_value == "0" and sc.lines[-1].raw_value == "999"
    assert sc.line_count == 1500


def test_scanner_small_bound_and_bytes():
    sc = PerfScanner(max_lines=2)
    assert sc.feed(b"performance: 1 a\n") == PerfLine(1.0, "1", "a", 1)
    sc.feed("nothing")
    sc.feed("performance: 2 a")
    sc.feed("performance: 3 a")
    assert [p.line_no for p in sc.lines] == [1, 3]
    assert sc.count == 3 and sc.truncated
    assert not PerfScanner().truncated
    with pytest.raises(ValueError):
        PerfScanner(max_lines=-1)


def test_scanner_lines_is_a_copy():
    sc = PerfScanner()
    sc.feed("performance: 1 a")
    sc.lines.clear()
    assert len(sc.lines) == 1


@pytest.mark.parametrize("line", [
    "performance: 100.5",
    "performance: 100.5\n",
    "performance:",
    "performance: 100/s,",
    "performance: NA",
])
def test_incomplete_lines_are_reported(line):
    sc = PerfScanner()
    sc.feed("x")
    sc.feed(line)
    assert sc.lines == []
    assert sc.incomplete == [2] and sc.incomplete_count == 1


def test_complete_or_unrelated_lines_are_not_incomplete():
    sc = PerfScanner().feed_all(["performance: 1 a", "performance is good", "performance: good"])
    assert sc.incomplete == []


# --------------------------------------------------------------------------------------
# HuggingFace fallback
# --------------------------------------------------------------------------------------

def hf_fallback(lines):
    """The scanner's HuggingFace fallback: the first train_samples_per_second value."""
    return PerfScanner().feed_all(lines).hf


@pytest.mark.parametrize("line,raw", [
    ("{'train_runtime': 12.1, 'train_samples_per_second': 4.23, 'epoch': 1.0}", "4.23"),
    ('{"train_samples_per_second": 105.7}', "105.7"),
    ("  train_samples_per_second =     12.345", "12.345"),
    ("train_samples_per_second: 1e3", "1e3"),
    ("train_samples_per_second=7", "7"),
])
def test_hf_fallback(line, raw):
    p = hf_fallback(["noise", line])
    assert p == PerfLine(float(raw), raw, HF_METRIC, 2)
    assert re.search(MADENGINE_HF_PATTERN, line).group(1) == raw


def test_hf_fallback_variants():
    assert hf_fallback(["nothing here", "samples_per_second: 5"]) is None
    assert hf_fallback(["train_samples_per_second: abc"]) is None  # madengine needs a digit first
    p = hf_fallback(["'train_samples_per_second': 4.2.3,"])
    assert p.value is None and p.raw_value == "4.2.3"  # madengine would store the text; not a number here
    p = hf_fallback(["train_samples_per_second = 1", "train_samples_per_second = 2"])
    assert p.raw_value == "1"


def test_scanner_hf_keeps_the_first():
    sc = PerfScanner().feed_all(["a", "train_samples_per_second = 3.5", "train_samples_per_second = 9"])
    assert sc.hf == PerfLine(3.5, "3.5", HF_METRIC, 2)
    assert sc.lines == []


# --------------------------------------------------------------------------------------
# choose_result
# --------------------------------------------------------------------------------------

def test_choose_result_none():
    assert choose_result("m", []) == (None, [])


def test_choose_result_single():
    row, warnings = choose_result("dummy", [PerfLine(14164.0, "14164", "samples_per_second", 3)])
    assert row == ResultRow("dummy", 14164.0, "14164", "samples_per_second", {})
    assert warnings == []


def test_repeated_identical_values_do_not_warn():
    lines = [PerfLine(5.0, "5", "x", i) for i in (1, 2, 3)]
    row, warnings = choose_result("m", lines)
    assert row.performance == 5.0 and warnings == []


def test_several_values_warn_and_keep_the_first():
    lines = [PerfLine(120.0, "120.0", "samples_per_second", 40), PerfLine(118.0, "118.0", "samples_per_second", 80),
             PerfLine(121.0, "121.0", "samples_per_second", 120), PerfLine(120.0, "120", "samples_per_second", 130)]
    row, warnings = choose_result("m", lines)
    assert row.performance == 120.0 and row.raw_performance == "120.0"
    assert warnings == ["3 different performance values printed; using the first (madengine's rule): "
                        "120.0 samples_per_second (line 40)"]


def test_non_number_first_is_a_failure_with_explanation():
    lines = [PerfLine(None, "NA", "samples_per_second", 10), PerfLine(100.0, "100", "samples_per_second", 20)]
    row, warnings = choose_result("m", lines)
    assert row.performance is None and row.raw_performance == "NA"
    assert any("madengine would skip it and report 100 samples_per_second (line 20)" in w for w in warnings)


def test_only_non_number():
    row, warnings = choose_result("m", [PerfLine(None, "nan", "x", 1)])
    assert row == ResultRow("m", None, "nan", "x", {})
    assert warnings == []


def test_number_first_later_non_number_warns():
    lines = [PerfLine(1.0, "1", "x", 1), PerfLine(None, "NA", "x", 2)]
    row, warnings = choose_result("m", lines)
    assert row.performance == 1.0
    assert any("1 later performance line(s) are not a number, first: NA x (line 2)" in w for w in warnings)


def test_different_metrics_warn():
    lines = [PerfLine(1.0, "1", "samples_per_second", 1), PerfLine(1.0, "1", "tokens_per_second", 2)]
    _, warnings = choose_result("m", lines)
    assert any("different metrics: samples_per_second, tokens_per_second" in w for w in warnings)


def test_truncated_total_warns():
    sc = PerfScanner(max_lines=5)
    for _ in range(8):
        sc.feed("performance: 2 x")
    row, warnings = choose_result("m", sc.lines, total=sc.count)
    assert row.performance == 2.0
    assert warnings == ["8 performance lines printed; only the first 5 were examined"]


def test_end_to_end_from_log():
    log = ["Epoch 1", "performance: 14164/s, samples_per_second", "performance: 14000 samples_per_second"]
    row, warnings = choose_result("pyt_bert", find_performance_lines(log))
    assert (row.name, row.performance, row.metric) == ("pyt_bert", 14164.0, "samples_per_second")
    assert len(warnings) == 1 and "line 2" in warnings[0]


# --------------------------------------------------------------------------------------
# multiple_results CSV
# --------------------------------------------------------------------------------------

def write(tmp_path, text, name="results.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def test_multiple_results_basic_naming(tmp_path):
    p = write(tmp_path, "model,performance,metric\nbs1,100.5,samples_per_second\nbs8,800,samples_per_second\n")
    rows = parse_multiple_results(p, "pyt_huggingface_bert")
    assert rows == [
        ResultRow("pyt_huggingface_bert_bs1", 100.5, "100.5", "samples_per_second", {}),
        ResultRow("pyt_huggingface_bert_bs8", 800.0, "800", "samples_per_second", {}),
    ]


def test_multiple_results_scoped_model_name(tmp_path):
    p = write(tmp_path, "model,performance,metric\nfp16,1,x\n")
    assert parse_multiple_results(p, "vllm/llama")[0].name == "vllm/llama_fp16"


def test_multiple_results_whitespace_in_header_and_values(tmp_path):
    # madengine issue #115: "model, performance, metric"
    p = write(tmp_path, "model, performance , metric\n  a  , 1.5 ,  tok/s \n")
    rows = parse_multiple_results(p, "m")
    assert rows == [ResultRow("m_a", 1.5, "1.5", "tok/s", {})]


def test_multiple_results_extra_columns_kept_in_order(tmp_path):
    p = write(tmp_path, "batch_size, model,performance,metric, dtype ,\n8,a,10,x, fp16 ,\n")
    row = parse_multiple_results(p, "m")[0]
    assert row.name == "m_a"
    assert list(row.extra.items()) == [("batch_size", "8"), ("dtype", "fp16")]  # empty header dropped


def test_multiple_results_extra_columns_values_are_text(tmp_path):
    p = write(tmp_path, "model,performance,metric,batch_size,seq_len,latency_ms,note\n"
                        'a,1,x,0032,1e3,-1.50,"=HYPERLINK(""x"")"\nb,2,x,,  , nan,\n')
    a, b = parse_multiple_results(p, "m")
    assert list(a.extra.items()) == [("batch_size", "0032"), ("seq_len", "1e3"), ("latency_ms", "-1.50"),
                                     ("note", '=HYPERLINK("x")')]
    assert dict(b.extra) == {"batch_size": "", "seq_len": "", "latency_ms": "nan", "note": ""}


def test_multiple_results_extra_names_stripped(tmp_path):
    p = write(tmp_path, "model,performance,metric,  batch_size\t,\tseq len \na,1,x,8,128\n")
    assert list(parse_multiple_results(p, "m")[0].extra) == ["batch_size", "seq len"]


def test_multiple_results_clashing_columns_are_prefixed(tmp_path):
    p = write(tmp_path, "model,performance,metric,status,n_gpus, tags ,baseline,delta_pct,metric:p50,bs\n"
                        "a,1,x,weird,99,t,b,d,5,8\n")
    row = parse_multiple_results(p, "m")[0]
    assert list(row.extra.items()) == [
        ("mr_status", "weird"), ("mr_n_gpus", "99"), ("mr_tags", "t"), ("mr_baseline", "b"),
        ("mr_delta_pct", "d"), ("mr_metric:p50", "5"), ("bs", "8")]


def test_multiple_results_clash_with_a_prefixed_column_prefixes_again(tmp_path):
    p = write(tmp_path, "model,performance,metric,mr_status,status\na,1,x,1,2\n")
    assert dict(parse_multiple_results(p, "m")[0].extra) == {"mr_status": "1", "mr_mr_status": "2"}


def test_reserved_names_cover_perf_csv_and_per_row_junit_keys():
    assert set(PERF_CSV_COLUMNS) <= RESERVED_EXTRA_NAMES
    assert {"performance", "metric", "baseline", "delta_pct", "baseline_note"} <= RESERVED_EXTRA_NAMES
    assert is_reserved_extra_name("status") and is_reserved_extra_name("performance:p99")
    assert not is_reserved_extra_name("batch_size") and not is_reserved_extra_name("p50:metric")
    assert EXTRA_PREFIX == "mr_"


def test_reserved_names_cover_every_per_row_baseline_property():
    from pytest_madengine.results import baseline
    from pytest_madengine.results.result import SUCCESS, ModelResult, Row

    rows = [Row("m_a", 1.0, "x", SUCCESS), Row("m_b", 1.0, "x", SUCCESS), Row("m_c", 1.0, "x", SUCCESS)]
    r = ModelResult("m", SUCCESS, rows=rows)
    entries = {"m_a": baseline.Entry("m_a", 2.0, "x"), "m_b": baseline.Entry("m_b", 2.0, "y")}
    baseline.apply(r, baseline.compare(r, baseline.Baseline("b.csv", entries), 5.0))
    heads = {k.partition(":")[0] for k in r.properties if ":" in k}
    assert heads == {"baseline", "delta_pct", "baseline_note"} and heads <= RESERVED_EXTRA_NAMES


@pytest.mark.parametrize("extra,expected", [
    ({}, {}),
    ({" a ": "1", "": "2", "  ": "3", "b": "4"}, {"a": "1", "b": "4"}),
    ({"model": "x", "mr_model": "y"}, {"mr_mr_model": "x", "mr_model": "y"}),
    ({"mr_model": "y", "model": "x"}, {"mr_model": "y", "mr_mr_model": "x"}),
    ({"a": "1", " a": "2"}, {"a": "1", "mr_a": "2"}),
    ({"n": None, "k": 3}, {"n": "", "k": "3"}),
])
def test_safe_extra(extra, expected):
    got = safe_extra(extra)
    assert list(got.items()) == list(expected.items())
    assert safe_extra(got) == got  # a fixed point


def test_multiple_results_non_numeric_performance(tmp_path):
    p = write(tmp_path, 'model,performance,metric\na,NA,x\nb,,x\nc,nan,x\nd,"1,234",x\ne,95%,x\nf,inf,x\n'
                        "g,1_000,x\nh,1e999,x\ni,-2.5e-3,x\n")
    rows = parse_multiple_results(p, "m")
    assert [(r.name, r.performance, r.raw_performance) for r in rows] == [
        ("m_a", None, "NA"), ("m_b", None, ""), ("m_c", None, "nan"), ("m_d", None, "1,234"),
        ("m_e", None, "95%"), ("m_f", None, "inf"), ("m_g", None, "1_000"), ("m_h", None, "1e999"),
        ("m_i", -2.5e-3, "-2.5e-3"),
    ]


def test_multiple_results_missing_file(tmp_path):
    with pytest.raises(MetricsError) as e:
        parse_multiple_results(tmp_path / "x.csv", "m")
    assert str(e.value).startswith("multiple_results file 'x.csv' was not written by the script")
    assert str(tmp_path / "x.csv") in str(e.value)


def test_multiple_results_directory(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(MetricsError, match="'d.csv' is a directory"):
        parse_multiple_results(tmp_path / "d.csv", "m")


@pytest.mark.parametrize("header,missing", [
    ("model,perf,metric", ["'performance'"]),
    ("name,performance,metric", ["'model'"]),
    ("model,performance", ["'metric'"]),
    ("model", ["'performance'", "'metric'"]),
])
def test_multiple_results_missing_column(tmp_path, header, missing):
    p = write(tmp_path, header + "\na,1,x\n", name="out.csv")
    with pytest.raises(MetricsError) as e:
        parse_multiple_results(p, "m")
    msg = str(e.value)
    assert "'out.csv'" in msg and "missing the required column(s) " + ", ".join(missing) in msg


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_multiple_results_empty_file(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(MetricsError, match="'results.csv' is empty"):
        parse_multiple_results(p, "m")


@pytest.mark.parametrize("text", ["model,performance,metric\n", "model,performance,metric\n\n,,\n  ,  , \n"])
def test_multiple_results_header_only(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(MetricsError, match="has a header but no result rows"):
        parse_multiple_results(p, "m")


def test_multiple_results_blank_rows_skipped_and_crlf(tmp_path):
    p = write(tmp_path, "model,performance,metric\r\n\r\na,1,x\r\n,,\r\nb,2,x\r\n")
    assert [r.name for r in parse_multiple_results(p, "m")] == ["m_a", "m_b"]


def test_multiple_results_short_row_padded(tmp_path):
    p = write(tmp_path, "model,performance,metric,extra\na,1\n")
    row = parse_multiple_results(p, "m")[0]
    assert (row.performance, row.metric, dict(row.extra)) == (1.0, "", {"extra": ""})


def test_multiple_results_long_row_is_an_error(tmp_path):
    p = write(tmp_path, "model,performance,metric\na,1,x,surplus\n")
    with pytest.raises(MetricsError, match="line 2 has 4 cells but the header has 3 columns"):
        parse_multiple_results(p, "m")


def test_multiple_results_empty_model_is_an_error(tmp_path):
    p = write(tmp_path, "model,performance,metric\n ,1,x\n")
    with pytest.raises(MetricsError, match="line 2 has an empty 'model' cell"):
        parse_multiple_results(p, "m")


def test_multiple_results_duplicate_column(tmp_path):
    p = write(tmp_path, "model,performance,metric, performance\na,1,x,2\n")
    with pytest.raises(MetricsError, match="repeats column"):
        parse_multiple_results(p, "m")


def test_multiple_results_bom_and_quotes(tmp_path):
    p = write(tmp_path, '\ufeffmodel,performance,metric\n"a b",3,"tok/s"\n')
    assert parse_multiple_results(p, "m") == [ResultRow("m_a b", 3.0, "3", "tok/s", {})]


def test_multiple_results_not_utf8(tmp_path):
    p = write(tmp_path, b"model,performance,metric\n\xff\xfe,1,x\n")
    with pytest.raises(MetricsError, match="not UTF-8"):
        parse_multiple_results(p, "m")


def test_multiple_results_duplicate_row_names_are_kept(tmp_path):
    p = write(tmp_path, "model,performance,metric,bs\na,1,x,1\na,2,x,8\n")
    rows = parse_multiple_results(p, "m")
    assert [(r.name, r.extra["bs"]) for r in rows] == [("m_a", "1"), ("m_a", "8")]


def test_multiple_results_accepts_str_path(tmp_path):
    p = write(tmp_path, "model,performance,metric\na,1,x\n")
    assert parse_multiple_results(str(p), "m")[0].name == "m_a"


# --------------------------------------------------------------------------------------
# parse_number
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("1", 1.0), (" 2.5 ", 2.5), (".5", 0.5), ("5.", 5.0), ("-3", -3.0), ("+3", 3.0), ("1e3", 1000.0),
    ("1E-3", 0.001), ("", None), ("nan", None), ("inf", None), ("1_000", None), ("0x10", None),
    ("1e999", None), ("1 2", None), ("- 1", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


# --------------------------------------------------------------------------------------
# Aggregation and direction
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,rule", [
    # per-device: mean, never summed (madengine sums tok_per_s_per_gpu)
    ("tok_per_s_per_gpu", "mean"),
    ("tokens_per_second_per_gpu", "mean"),
    ("samples/sec/gpu", "mean"),
    ("TFLOP/s/GPU", "mean"),
    ("tflops_per_device", "mean"),
    ("samples_per_second_per_node", "mean"),
    ("img/s/gcd", "mean"),
    ("throughput-per-gpu", "mean"),
    # time and latency: mean
    ("latency", "mean"), ("latency_ms", "mean"), ("ms", "mean"), ("s", "mean"), ("sec", "mean"),
    ("seconds", "mean"), ("step_time", "mean"), ("duration", "mean"), ("ttft_ms", "mean"),
    ("ms/iter", "mean"), ("sec_per_iter", "mean"), ("total_time", "mean"), ("avgLatency", "mean"),
    # quality: mean
    ("accuracy", "mean"), ("top1_acc", "mean"), ("loss", "mean"), ("eval_loss", "mean"), ("perplexity", "mean"),
    # memory: max
    ("mem", "max"), ("memory", "max"), ("peak_memory_gb", "max"), ("GB", "max"), ("MB", "max"), ("GiB", "max"),
    ("MiB", "max"), ("bytes", "max"), ("total_memory", "max"),
    # throughput / totals without a per-device qualifier: sum
    ("samples_per_second", "sum"), ("tokens/sec", "sum"), ("tokens_per_second", "sum"), ("img/s", "sum"),
    ("it/s", "sum"), ("qps", "sum"), ("throughput", "sum"), ("total", "sum"), ("total_tokens", "sum"),
    ("GB/s", "sum"), ("memory_bandwidth", "sum"), ("tflops", "sum"), ("samplesPerSecond", "sum"),
    ("requests/min", "sum"),
    # intensive and unknown: mean (madengine: sum)
    ("mfu", "mean"), ("gpu_util_percent", "mean"), ("speedup", "mean"),
    ("foo", "mean"), ("score_x", "mean"), ("", "mean"), ("tokens", "mean"),
])
def test_aggregation_rule(metric, rule):
    assert aggregation_rule(metric) == rule


@pytest.mark.parametrize("override", ["mean", "sum", "max", "min", "rank0", " SUM "])
def test_aggregation_override_wins(override):
    assert aggregation_rule("tok_per_s_per_gpu", override) == override.strip().lower()


def test_aggregation_bad_override():
    with pytest.raises(UsageError, match="'median'"):
        aggregation_rule("x", "median")


def test_aggregate_rules():
    assert aggregate([100.0, 110.0], "tok_per_s_per_gpu") == Aggregate(105.0, "mean", 2)
    assert aggregate([100.0, 110.0], "samples_per_second") == Aggregate(210.0, "sum", 2)
    assert aggregate([10.0, 12.0, 11.0], "peak_memory_gb") == Aggregate(12.0, "max", 3)
    assert aggregate([3.0, 1.0], "latency_ms", "min") == Aggregate(1.0, "min", 2)
    assert aggregate([3.0, 1.0], "x", "rank0") == Aggregate(3.0, "rank0", 2)
    assert aggregate([7], "foo") == Aggregate(7.0, "mean", 1)
    assert aggregate([0.1] * 10, "throughput").value == 1.0  # fsum, no drift


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [1.0, math.inf], [1.0, None], ["1"], [True]])
def test_aggregate_rejects_bad_values(values):
    with pytest.raises(MetricsError):
        aggregate(values, "samples_per_second")


@pytest.mark.parametrize("metric,better", [
    ("samples_per_second", "higher"), ("tokens/sec", "higher"), ("tok_per_s_per_gpu", "higher"),
    ("throughput", "higher"), ("qps", "higher"), ("img/s", "higher"), ("tflops", "higher"),
    ("GB/s", "higher"), ("GB/s/gpu", "higher"), ("total_tokens", "higher"),
    ("latency", "lower"), ("latency_ms", "lower"), ("ms", "lower"), ("s", "lower"), ("seconds", "lower"),
    ("step_time", "lower"), ("ms/iter", "lower"), ("latency_per_gpu", "lower"), ("ttft", "lower"),
    ("loss", "lower"), ("eval_loss", "lower"), ("wer", "lower"), ("perplexity", "lower"),
    ("memory", "lower"), ("peak_memory_gb", "lower"), ("GiB", "lower"), ("memory_per_gpu_gb", "lower"),
    ("accuracy", "higher"), ("top1", "higher"), ("f1", "higher"), ("bleu", "higher"),
    ("mfu", "higher"), ("speedup", "higher"), ("foo", "higher"), ("", "higher"),
])
def test_direction(metric, better):
    assert direction(metric) == better


def test_direction_override():
    assert direction("samples_per_second", "lower") == "lower"
    assert direction("latency", " Higher ") == "higher"
    with pytest.raises(UsageError):
        direction("x", "up")


def test_dataclasses_are_frozen():
    p = PerfLine(1.0, "1", "x", 1)
    with pytest.raises(AttributeError):
        p.value = 2.0  # type: ignore[misc]
    r = ResultRow("m", 1.0, "1", "x")
    assert r.extra == {}
    with pytest.raises(AttributeError):
        r.name = "n"  # type: ignore[misc]
