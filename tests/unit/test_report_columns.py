"""Extra multiple_results columns end to end: Row/ModelResult, JUnit properties and read-back,
perf.csv header growth (atomic, concurrent) and spreadsheet-safe cells."""

from __future__ import annotations

import csv
import fcntl
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_madengine.executors.base import RunOutcome
from pytest_madengine.results import report
from pytest_madengine.results.junit import read_results, result_from_properties
from pytest_madengine.results.merge import merge_files
from pytest_madengine.results.metrics import PERF_CSV_COLUMNS
from pytest_madengine.results.report import (
    NUMERIC_COLUMNS,
    PERF_COLUMNS,
    append_perf_csv,
    junit_properties,
    perf_rows,
    spreadsheet_safe,
)
from pytest_madengine.results.result import FAILURE, SUCCESS, ModelResult, Row
from pytest_madengine.verdict import evaluate
from tests.junit_xml import junit_xml

MR = "model,performance,metric,batch_size,seq_len,latency_ms\n" \
     "bs8,100.5,tok/s,8,128,12.5\nbs32,380,tok/s,32,512,-1.5\n"


def multi(extra_a: dict[str, str] | None = None, extra_b: dict[str, str] | None = None, **kw: object) -> ModelResult:
    rows = [Row("m_bs8", 100.5, "tok/s", SUCCESS, extra_a if extra_a is not None else {"batch_size": "8"}),
            Row("m_bs32", 380.0, "tok/s", SUCCESS, extra_b if extra_b is not None else {"batch_size": "32"})]
    base: dict[str, object] = dict(model="m", status=SUCCESS, rows=rows, executor="local", duration=1.0)
    base.update(kw)
    return ModelResult(**base)  # type: ignore[arg-type]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------
# Row and ModelResult
# --------------------------------------------------------------------------------------


class TestRow:
    def test_evaluate_carries_extra_columns_into_rows(self, tmp_path: Path) -> None:
        (tmp_path / "r.csv").write_text(MR)
        status, reason, rows, _ = evaluate("m", RunOutcome(exit_code=0, duration=1.0), [], "r.csv", tmp_path, 10)
        assert (status, reason) == (SUCCESS, "")
        assert [(r.name, list(r.extra.items())) for r in rows] == [
            ("m_bs8", [("batch_size", "8"), ("seq_len", "128"), ("latency_ms", "12.5")]),
            ("m_bs32", [("batch_size", "32"), ("seq_len", "512"), ("latency_ms", "-1.5")])]

    def test_round_trips_through_dicts_in_order(self) -> None:
        r = multi({"z": "1", "a": "2", "batch_size": "8"})
        back = ModelResult.from_dict(r.to_dict())
        assert back == r and list(back.rows[0].extra) == ["z", "a", "batch_size"]
        assert back.rows[0].extra is not r.rows[0].extra

    def test_old_dicts_without_extra_still_load(self) -> None:
        d = multi().to_dict()
        for row in d["rows"]:
            del row["extra"]
        assert [r.extra for r in ModelResult.from_dict(d).rows] == [{}, {}]

    def test_default_and_positional_construction_unchanged(self) -> None:
        assert Row("m", 1.0, "x", SUCCESS).extra == {}
        assert Row("m", 1.0, "x", SUCCESS) == Row("m", 1.0, "x", SUCCESS, {})

    def test_clashing_names_never_reach_our_columns(self) -> None:
        row = Row("m_a", 1.0, "x", SUCCESS, {" status ": "weird", "": "dropped", "bs": 8})  # type: ignore[dict-item]
        assert row.extra == {"mr_status": "weird", "bs": "8"}


# --------------------------------------------------------------------------------------
# JUnit
# --------------------------------------------------------------------------------------


class TestJUnit:
    def test_extra_cells_follow_their_row(self) -> None:
        r = multi({"batch_size": "8", "seq_len": "128"}, {"batch_size": "32"})
        props = junit_properties(r)
        names = [k for k, _ in props]
        i = names.index("performance:m_bs8")
        assert props[i:i + 7] == [
            ("performance:m_bs8", "100.5"), ("metric:m_bs8", "tok/s"), ("batch_size:m_bs8", "8"),
            ("seq_len:m_bs8", "128"), ("performance:m_bs32", "380"), ("metric:m_bs32", "tok/s"),
            ("batch_size:m_bs32", "32")]
        assert dict(props)["performance"] == "100.5"  # the first row, as before

    def test_single_row_named_after_the_model(self) -> None:
        r = ModelResult("m", SUCCESS, rows=[Row("m", 1.0, "x", SUCCESS, {"bs": "4"})])
        props = junit_properties(r)
        assert ("bs:m", "4") in props and not any(k.startswith("performance:") for k, _ in props)
        back = result_from_properties(props)
        assert back.rows == r.rows and "bs:m" not in back.properties

    def test_names_a_junit_file_cannot_carry_are_left_out(self) -> None:
        r = multi({"a=b": "1", "x::y": "2", "l\nm": "3", "ok:colon": "4"})
        names = [k for k, _ in junit_properties(r)]
        assert "ok:colon:m_bs8" in names
        assert not any(n.startswith(("a=b", "x::y", "l\n")) for n in names)

    def test_read_back_into_rows_not_metrics(self) -> None:
        r = multi({"batch_size": "8", "note": "=1+1", "lat:p50": "3"}, {"batch_size": "32"},
                  properties={"regressed": "", "delta_pct:m_bs8": "-1.00", "baseline:m_bs8": "101",
                              "custom": "c"})
        back = result_from_properties(junit_properties(r))
        assert [(x.name, x.performance, x.metric) for x in back.rows] == \
            [("m_bs8", 100.5, "tok/s"), ("m_bs32", 380.0, "tok/s")]
        assert [list(x.extra.items()) for x in back.rows] == \
            [[("batch_size", "8"), ("note", "=1+1"), ("lat:p50", "3")], [("batch_size", "32")]]
        assert back.properties == {"regressed": "", "delta_pct:m_bs8": "-1.00", "baseline:m_bs8": "101",
                                   "custom": "c"}
        meta = {"machine_name": "h"}
        assert perf_rows(back, meta) == perf_rows(r, meta)
        assert junit_properties(back) == junit_properties(r)

    def test_row_names_with_colons(self) -> None:
        r = ModelResult("m", SUCCESS, rows=[Row("m:a", 1.0, "x", SUCCESS, {"c:d": "1"}),
                                            Row("m:a:b", 2.0, "x", SUCCESS, {"e": "2"})])
        back = result_from_properties(junit_properties(r))
        assert [(x.name, x.extra) for x in back.rows] == [("m:a", {"c:d": "1"}), ("m:a:b", {"e": "2"})]

    def test_unknown_row_stays_a_property(self) -> None:
        props = junit_properties(multi()) + [("batch_size:elsewhere", "1")]
        back = result_from_properties(props)
        assert back.properties == {"batch_size:elsewhere": "1"}

    @pytest.mark.parametrize("family", ["xunit1", "xunit2"])
    def test_read_from_a_junit_file_and_merged_to_perf_csv(self, tmp_path: Path, family: str) -> None:
        r = multi({"batch_size": "8", "seq_len": "128"}, {"batch_size": "32", "dtype": "fp16"})
        path = tmp_path / "j.xml"
        path.write_text(junit_xml([r], family))
        (back,) = read_results(path)
        assert [x.extra for x in back.rows] == [x.extra for x in r.rows]
        out = tmp_path / "merged.csv"
        merge_files([path], None, out)
        header, rows = read_csv(out)
        assert header == [*PERF_COLUMNS, "batch_size", "seq_len", "dtype"]
        assert [(x["model"], x["batch_size"], x["seq_len"], x["dtype"]) for x in rows] == \
            [("m_bs8", "8", "128", ""), ("m_bs32", "32", "", "fp16")]


# --------------------------------------------------------------------------------------
# perf.csv
# --------------------------------------------------------------------------------------


class TestPerfRows:
    def test_extras_follow_our_columns(self) -> None:
        a, b = perf_rows(multi({"batch_size": "8", "seq_len": "128"}), {})
        assert list(a)[-2:] == ["batch_size", "seq_len"] and set(a) - set(PERF_COLUMNS) == {"batch_size", "seq_len"}
        assert a["model"] == "m_bs8" and a["seq_len"] == "128"
        assert b["batch_size"] == "32" and "seq_len" not in b

    def test_failure_row_has_no_extras(self) -> None:
        (row,) = perf_rows(ModelResult("m", FAILURE, reason="boom"), {})
        assert set(row) <= set(PERF_COLUMNS)

    def test_perf_columns_are_defined_once(self) -> None:
        assert PERF_COLUMNS is PERF_CSV_COLUMNS


class TestAppend:
    def test_new_file_header_is_ours_then_the_extras(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        append_perf_csv(path, perf_rows(multi({"batch_size": "8", "seq_len": "128"}, {"dtype": "bf16"}), {}))
        header, rows = read_csv(path)
        assert header == [*PERF_COLUMNS, "batch_size", "seq_len", "dtype"]
        assert [(r["batch_size"], r["seq_len"], r["dtype"]) for r in rows] == [("8", "128", ""), ("", "", "bf16")]

    def test_header_grows_and_old_rows_get_empty_cells(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        append_perf_csv(path, perf_rows(ModelResult("plain", SUCCESS, rows=[Row("plain", 1.0, "x", SUCCESS)]), {}))
        append_perf_csv(path, perf_rows(multi({"batch_size": "8"}, {"batch_size": "32"}), {}))
        append_perf_csv(path, perf_rows(multi({"seq_len": "128"}, {}), {}))
        append_perf_csv(path, perf_rows(ModelResult("again", SUCCESS, rows=[Row("again", 2.0, "x", SUCCESS)]), {}))
        header, rows = read_csv(path)
        assert header == [*PERF_COLUMNS, "batch_size", "seq_len"]
        assert [(r["model"], r["performance"], r["batch_size"], r["seq_len"]) for r in rows] == [
            ("plain", "1", "", ""), ("m_bs8", "100.5", "8", ""), ("m_bs32", "380", "32", ""),
            ("m_bs8", "100.5", "", "128"), ("m_bs32", "380", "", ""), ("again", "2", "", "")]
        with open(path, newline="") as fh:
            assert {len(cells) for cells in csv.reader(fh)} == {len(header)}
        assert leftovers(tmp_path) == []

    def test_common_case_is_an_append_and_a_rewrite_replaces_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        append_perf_csv(path, perf_rows(multi(), {}))
        ino = os.stat(path).st_ino
        append_perf_csv(path, perf_rows(multi(), {}))  # same columns: appended in place
        append_perf_csv(path, perf_rows(ModelResult("p", SUCCESS, rows=[Row("p", 1.0, "x", SUCCESS)]), {}))
        assert os.stat(path).st_ino == ino
        append_perf_csv(path, perf_rows(multi({"new": "1"}), {}))  # a new column: replaced
        assert os.stat(path).st_ino != ino and read_csv(path)[0][-1] == "new"
        assert len(read_csv(path)[1]) == 7 and leftovers(tmp_path) == []

    def test_madengine_columns_of_an_existing_file_are_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        path.write_text("model,performance,metric,status,gpu_clock,relative_change\n"
                        "old,5,x,SUCCESS,1700,\n")
        append_perf_csv(path, perf_rows(multi({"batch_size": "8"}, {}), {}))
        header, rows = read_csv(path)
        # our own columns the file lacks stay out (as before); the extra column is added
        assert header == ["model", "performance", "metric", "status", "gpu_clock", "relative_change", "batch_size"]
        assert [(r["model"], r["gpu_clock"], r["batch_size"]) for r in rows] == \
            [("old", "1700", ""), ("m_bs8", "", "8"), ("m_bs32", "", "")]

    def test_rewrite_keeps_mode_bom_quoting_and_odd_old_rows(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        path.write_bytes('\ufeffmodel,performance,metric\n"a,b",1,"multi\nline"\n\nshort\n'.encode())
        os.chmod(path, 0o640)
        append_perf_csv(path, [{"model": "n", "performance": "2", "metric": "x", "bs": "4"}])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbfmodel,performance,metric,bs\n")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            assert list(csv.reader(fh)) == [["model", "performance", "metric", "bs"], ["a,b", "1", "multi\nline", ""],
                                            ["short", "", "", ""], ["n", "2", "x", "4"]]

    def test_bom_header_is_recognised_for_a_plain_append(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        path.write_bytes("\ufeffmodel,performance,metric,bs\n".encode())
        ino = os.stat(path).st_ino
        append_perf_csv(path, [{"model": "n", "performance": "2", "metric": "x", "bs": "4"}])
        assert os.stat(path).st_ino == ino
        assert path.read_bytes() == "\ufeffmodel,performance,metric,bs\nn,2,x,4\n".encode()

    def test_last_line_without_newline(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        path.write_text("model,performance,metric\na,1,x")
        append_perf_csv(path, [{"model": "b", "performance": "2", "metric": "x"}])
        assert path.read_text() == "model,performance,metric\na,1,x\nb,2,x\n"

    @pytest.mark.parametrize("text", ["", "\n", " \n\n"])
    def test_empty_or_blank_file_is_started(self, tmp_path: Path, text: str) -> None:
        path = tmp_path / "perf.csv"
        path.write_text(text)
        append_perf_csv(path, [{"model": "b", "bs": "1"}])
        header, rows = read_csv(path)
        assert header == [*PERF_COLUMNS, "bs"] and [(r["model"], r["bs"]) for r in rows] == [("b", "1")]

    def test_lines_without_a_header_get_one(self, tmp_path: Path) -> None:
        path = tmp_path / "perf.csv"
        path.write_text("\nstray,1\n")
        append_perf_csv(path, [{"model": "b"}])
        with open(path, newline="") as fh:
            cells = list(csv.reader(fh))
        assert cells[0] == list(PERF_COLUMNS) and cells[1][:2] == ["stray", "1"] and cells[2][0] == "b"

    def test_symlinked_perf_csv_keeps_its_link(self, tmp_path: Path) -> None:
        (tmp_path / "real").mkdir()
        target = tmp_path / "real" / "perf.csv"
        target.write_text("model,performance,metric\na,1,x\n")
        link = tmp_path / "perf.csv"
        link.symlink_to(target)
        append_perf_csv(link, [{"model": "b", "performance": "2", "metric": "x", "bs": "8"}])
        assert link.is_symlink() and read_csv(target)[0] == ["model", "performance", "metric", "bs"]
        assert leftovers(tmp_path / "real") == []

    def test_failed_rewrite_leaves_the_file_and_no_temp_file(self, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "perf.csv"
        path.write_text("model,performance,metric\na,1,x\n")

        def boom(src: str, dst: object) -> None:
            assert Path(src).parent == tmp_path and Path(src).exists()  # written next to perf.csv
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(report.os, "replace", boom)
        with pytest.raises(OSError, match="No space"):
            append_perf_csv(path, [{"model": "b", "bs": "8"}])
        assert path.read_text() == "model,performance,metric\na,1,x\n" and leftovers(tmp_path) == []

    def test_appender_waiting_on_a_replaced_file_follows_it(self, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "perf.csv"
        path.write_text("model,performance,metric\nold,1,x\n")
        waiting = threading.Event()
        real_flock = fcntl.flock

        def flock(fd: object, op: int) -> None:
            waiting.set()  # the appender has perf.csv open by now
            real_flock(fd, op)  # type: ignore[arg-type]

        monkeypatch.setattr(report, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX,
                                                             LOCK_UN=fcntl.LOCK_UN))
        with open(path, "a+b") as held:
            real_flock(held, fcntl.LOCK_EX)  # as a rewriter holding the lock
            t = threading.Thread(target=append_perf_csv, args=(path, [{"model": "late", "performance": "3"}]))
            t.start()
            assert waiting.wait(10)
            time.sleep(0.1)
            new = tmp_path / "new.csv"
            new.write_text("model,performance,metric,bs\nold,1,x,\n")
            os.replace(new, path)  # the rewrite lands while the appender waits on the old file
        t.join(10)
        assert not t.is_alive()
        assert path.read_text() == "model,performance,metric,bs\nold,1,x,\nlate,3,,\n"


def _append_many(path: str, worker: int, batches: int, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    for b in range(batches):
        rows = []
        for k in range(2):
            row = {"model": f"w{worker}_b{b}_r{k}", "performance": str(worker * 1000 + b), "metric": "x"}
            if b % 3:  # some batches bring no extra column at all
                row[f"x{worker}"] = f"{worker}-{b}-{k}"
                row["shared"] = "s"
            rows.append(row)
        append_perf_csv(Path(path), rows)


def test_concurrent_appenders_in_four_processes_get_the_union_header(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    workers, batches = 4, 25
    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_append_many, args=(str(path), w, batches, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    with open(path, newline="", encoding="utf-8") as fh:
        cells = list(csv.reader(fh))
    header, body = cells[0], cells[1:]
    assert header[:len(PERF_COLUMNS)] == list(PERF_COLUMNS)
    assert sorted(header[len(PERF_COLUMNS):]) == ["shared", "x0", "x1", "x2", "x3"]
    assert all(len(c) == len(header) for c in body)
    rows = [dict(zip(header, c)) for c in body]
    assert sorted(r["model"] for r in rows) == sorted(f"w{w}_b{b}_r{k}" for w in range(workers)
                                                        for b in range(batches) for k in range(2))
    for r in rows:
        w, b, k = (int(part[1:]) for part in r["model"].split("_"))
        assert r["performance"] == str(w * 1000 + b)
        for other in range(workers):
            want = f"{w}-{b}-{k}" if other == w and b % 3 else ""
            assert r[f"x{other}"] == want
        assert r["shared"] == ("s" if b % 3 else "")
    # each process's rows stay in its own order
    for w in range(workers):
        mine = [r["model"] for r in rows if r["model"].startswith(f"w{w}_")]
        assert mine == [f"w{w}_b{b}_r{k}" for b in range(batches) for k in range(2)]
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------
# Spreadsheet-safe cells
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("=1+2", "'=1+2"), ("+cmd", "'+cmd"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"), ("--bs 8", "'--bs 8"),
    ("-", "'-"), ("-inf", "'-inf"), ("=", "'="),
    ("-1.5", "-1.5"), ("+3", "+3"), ("-2e-3", "-2e-3"), ("-.5", "-.5"), ("", ""), ("a=b", "a=b"),
    ("'=x", "'=x"), (" =x", " =x"), ("12", "12"),
])
def test_spreadsheet_safe(value: str, expected: str) -> None:
    assert spreadsheet_safe(value) == expected


def test_formula_cells_escaped_in_text_and_extra_columns_only(tmp_path: Path) -> None:
    r = ModelResult("=m", SUCCESS, rows=[Row("=m_a", -1.5, "-ms", SUCCESS, {"note": "=HYPERLINK(\"x\")",
                                                                             "delta": "-1.5", "who": "@me"})],
                    args="--bs 8", properties={"relative_change": "-25.00"})
    path = tmp_path / "perf.csv"
    append_perf_csv(path, perf_rows(r, {}))
    append_perf_csv(path, [{"model": "raw", "performance": "-x", "build_duration": "=1"}])
    _, (row, raw) = read_csv(path)
    assert (row["model"], row["metric"], row["args"]) == ("'=m_a", "'-ms", "--bs 8")  # args: verbatim
    assert (row["note"], row["delta"], row["who"]) == ("'=HYPERLINK(\"x\")", "-1.5", "'@me")
    assert (row["performance"], row["relative_change"]) == ("-1.5", "-25.00")
    assert (raw["performance"], raw["build_duration"]) == ("-x", "=1")  # numeric columns: as given
    assert {"performance", "relative_change", "n_gpus"} <= NUMERIC_COLUMNS


def test_rewrite_does_not_escape_old_rows_again(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text("model,performance,metric,note\nold,1,x,'=a\n")
    append_perf_csv(path, [{"model": "n", "note": "=b", "bs": "1"}])
    _, rows = read_csv(path)
    assert [(r["note"], r["bs"]) for r in rows] == [("'=a", ""), ("'=b", "1")]
