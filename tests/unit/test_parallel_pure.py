"""Pure parts of parallel regression runs: order, wait notes, baselines, JUnit read-back, summaries."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.gpus.scheduling import WaitNotes, gpu_demand, largest_first
from pytest_madengine.results import baseline as bl
from pytest_madengine.results.baseline import Baseline, BaselineError, Entry
from pytest_madengine.results.junit import mangle, parse_metrics_block, read_results, result_from_properties
from pytest_madengine.results.report import junit_properties, perf_rows, summary_rows
from pytest_madengine.results.result import FAILURE, SKIPPED, SUCCESS, ModelResult, Row
from pytest_madengine.results.summary import bars, markdown, svg_chart
from tests.junit_xml import junit_xml


def result(name="m", value=100.0, metric="samples_per_second", rows=None, **kw) -> ModelResult:
    rows = rows if rows is not None else [Row(name, value, metric, SUCCESS)]
    return ModelResult(model=name, status=kw.pop("status", SUCCESS), rows=rows, **kw)


class TestOrder:
    def test_largest_first_is_stable_and_keeps_other_items_in_place(self):
        items = ["plain1", ("a", 1), ("b", 4), "plain2", ("c", 2), ("d", 4), ("e", 1)]
        demand = lambda it: it[1] if isinstance(it, tuple) else None  # noqa: E731
        assert largest_first(items, demand) == ["plain1", ("b", 4), ("d", 4), "plain2", ("c", 2), ("a", 1), ("e", 1)]

    def test_whole_pool_counts_as_the_pool_size(self):
        assert gpu_demand(-1, 8) == 8 and gpu_demand(3, 8) == 3 and gpu_demand(0, 8) == 0


class TestWaitNotes:
    def test_first_note_at_once_then_at_most_every_10_s(self):
        now = [0.0]
        notes: list[str] = []
        waits = WaitNotes(notes.append, 4, (0, 1, 2, 3), clock=lambda: now[0])
        for t in (0.1, 0.2, 5.0, 10.05, 10.2, 19.0, 20.3):
            now[0] = t
            waits(t)
        assert len(notes) == 3
        assert notes[0].startswith("waiting for 4 GPUs of pool [0, 1, 2, 3]") and "20 s so far" in notes[2]
        assert waits.waited == 20.3


class TestLoadBaseline:
    def test_perf_csv_last_successful_row_with_a_number_wins(self, tmp_path):
        path = tmp_path / "perf.csv"
        path.write_text("\ufeffmodel,n_gpus,performance,metric,status\n"
                        "a,1,10,x,SUCCESS\n"
                        "a,1,12,x,SUCCESS\n"
                        "a,1,3,x,FAILURE\n"      # a regression or failure never becomes the baseline
                        "b,1,,x,FAILURE\n"
                        "c,1,NA,x,SUCCESS\n"
                        "d,1,1.5e3,y,\n")
        base = bl.load(path)
        assert base.entries == {"a": Entry("a", 12.0, "x"), "d": Entry("d", 1500.0, "y")}

    @pytest.mark.parametrize("text, message", [
        ("", "empty file"),
        ("model,value\na,1\n", "missing column(s) performance, metric"),
        ("<testsuites><testsuite>", "not well-formed XML"),
        ("<html/>", "not a JUnit file"),
    ])
    def test_bad_files_name_the_file(self, tmp_path, text, message):
        path = tmp_path / "b.txt"
        path.write_text(text)
        with pytest.raises(BaselineError, match=re.escape(message)) as info:
            bl.load(path)
        assert str(path) in str(info.value) and isinstance(info.value, UsageError)

    def test_missing_file(self, tmp_path):
        with pytest.raises(BaselineError, match="nope.csv: cannot read"):
            bl.load(tmp_path / "nope.csv")

    @pytest.mark.parametrize("family", ["xunit1", "xunit2"])
    def test_junit_either_form(self, tmp_path, family):
        ok = result("ok", 7.0, "ms")
        multi = result("mm", rows=[Row("mm_a", 1.0, "x", SUCCESS), Row("mm_b", 2.0, "x", SUCCESS)])
        bad = result("bad", rows=[], status=FAILURE, reason="exit code 1")
        path = tmp_path / "j.xml"
        path.write_text(junit_xml([ok, multi, bad], family))
        base = bl.load(path)
        assert base.entries == {"ok": Entry("ok", 7.0, "ms"), "mm_a": Entry("mm_a", 1.0, "x"),
                                "mm_b": Entry("mm_b", 2.0, "x")}


class TestCompare:
    base = Baseline("b.csv", {"tput": Entry("tput", 1000.0, "samples_per_second"),
                              "lat": Entry("lat", 10.0, "ms"), "zero": Entry("zero", 0.0, "x"),
                              "other": Entry("other", 5.0, "tokens/s")})

    @pytest.mark.parametrize("name, metric, value, regressed, delta", [
        ("tput", "samples_per_second", 877.0, True, -12.3),
        ("tput", "samples_per_second", 950.0, False, -5.0),     # exactly the threshold: not worse by more
        ("tput", "samples_per_second", 949.0, True, -5.1),
        ("tput", "samples_per_second", 2000.0, False, 100.0),
        ("lat", "ms", 12.0, True, 20.0),
        ("lat", "ms", 10.5, False, 5.0),
        ("lat", "ms", 5.0, False, -50.0),
    ])
    def test_direction_decides_what_is_worse(self, name, metric, value, regressed, delta):
        (c,) = bl.compare(result(name, value, metric), self.base, 5.0)
        assert c.regressed is regressed and c.delta_pct == pytest.approx(delta)

    def test_message(self):
        (c,) = bl.compare(result("tput", 877.0), self.base, 5.0)
        assert c.message("tput") == "regressed 12.3% vs baseline (1000 -> 877 samples_per_second)"
        assert c.message("model").startswith("tput: regressed")

    @pytest.mark.parametrize("name, metric, note", [
        ("new", "x", "no baseline"),
        ("zero", "x", "baseline is 0"),
        ("other", "ms", "metric changed (tokens/s -> ms)"),
    ])
    def test_not_comparable(self, name, metric, note):
        (c,) = bl.compare(result(name, 1.0, metric), self.base, 5.0)
        assert (c.regressed, c.delta_pct, c.note) == (False, None, note)

    def test_direction_precedence(self):
        rd = bl.resolve_direction
        assert rd("r", "m", "ms", {}) == "lower"
        assert rd("r", "m", "ms", {}, "higher") == "higher"                    # models.json word
        assert rd("r", "m", "ms", {}, {"ms": "higher"}) == "higher"            # models.json by metric
        assert rd("r", "m", "ms", {}, {"r": "higher", "ms": "lower"}) == "higher"
        assert rd("r", "m", "ms", {"ms": "higher"}, "lower") == "higher"       # the context wins
        assert rd("r", "m", "ms", {"m": "lower", "r": "higher"}) == "higher"   # row before model
        with pytest.raises(UsageError, match="'sideways'"):
            rd("r", "m", "ms", {}, "sideways")
        with pytest.raises(UsageError):
            rd("r", "m", "ms", {}, 3)

    def test_context_directions_are_validated(self):
        assert bl.validate_directions({"a": "Lower"}, "context") == {"a": "lower"}
        assert bl.validate_directions(None, "context") == {}
        with pytest.raises(UsageError, match=r"metric_direction\['a'\]"):
            bl.validate_directions({"a": "up"}, "context")
        with pytest.raises(UsageError, match="must map"):
            bl.validate_directions(["a"], "context")


class TestApply:
    base = Baseline("b", {"m": Entry("m", 100.0, "x"), "mm_a": Entry("mm_a", 10.0, "x"),
                          "mm_b": Entry("mm_b", 10.0, "x")})

    def test_single_row(self):
        r = result("m", 80.0, "x")
        bl.apply(r, bl.compare(r, self.base, 5.0))
        assert r.status == FAILURE and r.reason == "regressed 20.0% vs baseline (100 -> 80 x)"
        assert r.properties == {"baseline": "100", "delta_pct": "-20.00", "regressed": "m"}
        assert r.rows[0].status == FAILURE
        (row,) = perf_rows(r, {})
        assert (row["status"], row["performance"], row["relative_change"]) == (FAILURE, "80", "-20.00")
        assert summary_rows([r])[0][4] == "-20.0%"

    def test_several_rows_keep_their_own_values(self):
        r = result("mm", rows=[Row("mm_a", 10.0, "x", SUCCESS), Row("mm_b", 5.0, "x", SUCCESS),
                               Row("mm_c", 1.0, "x", SUCCESS)])
        bl.apply(r, bl.compare(r, self.base, 5.0))
        assert r.status == FAILURE and r.reason == "mm_b: regressed 50.0% vs baseline (10 -> 5 x)"
        assert [row.status for row in r.rows] == [SUCCESS, FAILURE, SUCCESS]
        assert [c[4] for c in summary_rows([r])] == ["+0.0%", "-50.0%", "no baseline"]
        assert [row["relative_change"] for row in perf_rows(r, {})] == ["0.00", "-50.00", ""]
        assert r.properties["baseline:mm_c"] == "none" and r.properties["delta_pct"] == "0.00"

    def test_passing_result_stays_passing(self):
        r = result("m", 101.0, "x")
        bl.apply(r, bl.compare(r, self.base, 5.0))
        assert r.passed and r.reason == "" and "regressed" not in r.properties

    def test_not_compared_results_show_nothing(self):
        assert summary_rows([result("m", 1.0, "x")])[0][4] == ""


class TestJUnitReadBack:
    def test_metrics_block_values_with_newlines(self):
        assert parse_metrics_block("noise\n[pytest-madengine metrics]\na=1\nreason=x\ny\nb=\n") == \
            [("a", "1"), ("reason", "x\ny"), ("b", "")]
        assert parse_metrics_block("no block") is None

    def test_mangle_is_pytests(self):
        assert mangle("scripts/zoo/models.json::zoo/bert") == ("scripts.zoo.models.json", "zoo/bert")
        assert mangle("models.json::[unreadable]") == ("models.json", "[unreadable]")
        assert mangle("scripts/x/get_models_json.py::m") == ("scripts.x.get_models_json", "m")

    @pytest.mark.parametrize("r", [
        result("m", 1234567.0, "tok/s", tags=("a", "b"), n_gpus=2, gpus=(0, 1), runtime_ngpus=2, duration=1.5,
               executor="docker", args="--bs 8", training_precision="fp16", dockerfile="docker/x",
               gpu_architecture="gfx942", dataname="d", image="img:1", build_duration=3.25,
               docker_sha="sha256:1", launcher="torchrun", nnodes=2,
               warnings=["w1", "w2"]),
        result("mm", rows=[Row("mm_a", 1.0, "x", SUCCESS), Row("mm_b", 2.0, "x", FAILURE)], status=FAILURE,
               reason="mm_b: regressed", properties={"regressed": "mm_b", "delta_pct:mm_b": "-50.00"}),
        result("f", rows=[], status=FAILURE, reason="exit code 3", n_gpus=-1),
        result("s", rows=[Row("s", None, "", SKIPPED)], status=SKIPPED, reason="skip_gpu_arch"),
    ], ids=["full", "regressed-row", "failed", "skipped"])
    def test_properties_round_trip_to_the_same_perf_rows(self, r):
        back = result_from_properties(junit_properties(r))
        meta = {"machine_name": "h"}
        assert perf_rows(back, meta) == perf_rows(r, meta)
        assert back.warnings == r.warnings and back.reason == r.reason

    def test_crashed_model_case_without_our_values_still_counts(self, tmp_path):
        path = tmp_path / "j.xml"
        path.write_text('<testsuite name="pytest" hostname="h">'
                        '<testcase classname="models.json" name="gone"><failure message="worker \'gw0\' crashed '
                        'while running \'models.json::gone\'"/></testcase>'
                        '<testcase classname="tests.test_x" name="test_plain"/>'
                        "</testsuite>")
        (r,) = read_results(path)
        assert (r.model, r.status, r.reason) == ("gone", FAILURE, "worker 'gw0' crashed while running 'models.json::gone'")


class TestSummary:
    def results(self) -> list[ModelResult]:
        r1 = result("a|b", 80.0, "x", properties={"baseline": "100", "delta_pct": "-20.00", "regressed": "a|b"},
                    status=FAILURE)
        r1.rows[0].status = FAILURE
        r2 = result("<new>", 3.0, "ms", properties={"baseline": "none"})
        r3 = result("f", rows=[], status=FAILURE, reason="boom")
        return [r1, r2, r3]

    def test_markdown(self):
        md = markdown(self.results(), chart="s.svg")
        assert "| a\\|b | FAILURE | 80 | x | -20.0% |" in md
        assert "| <new> | SUCCESS | 3 | ms | no baseline |" in md
        assert "| f | FAILURE |  |  |  |" in md
        assert "2 FAILURE, 1 SUCCESS" in md and md.rstrip().endswith("![performance vs baseline](s.svg)")

    def test_svg_is_well_formed_and_shows_both_bars(self):
        items = bars(self.results())
        assert [(b.name, b.current, b.baseline, b.regressed) for b in items] == \
            [("a|b", 80.0, 100.0, True), ("<new>", 3.0, None, False)]
        svg = svg_chart(items)
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert "&lt;new&gt;" in svg and "<new>" in texts and "-20.0%" in texts and "no baseline" in texts
        rects = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("y") not in (None, "26")]
        widths = sorted(float(r.get("width")) for r in rects if r.get("width") != "100%")
        assert widths == [256.0, 320.0, 320.0]  # 80 of 100 scaled to 320 px; each group to its own max
        ET.fromstring(svg_chart([]))


def test_script_env_exposes_the_ids_held(tmp_path: Path):
    from pytest_madengine.context import build
    from pytest_madengine.models import Model
    from pytest_madengine.session import script_env

    model = Model(name="m", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="d", scripts="run.sh", n_gpus=2, tags=())
    ctx, _ = build([])
    common = dict(vendor="NONE", arch="", system_ngpus=0, runtime_ngpus=2, deployment="local")
    env = script_env(model, ctx, gpus=(2, 3), use_devices=False, **common)
    assert env["MAD_GPU_IDS"] == "2,3" and "HIP_VISIBLE_DEVICES" not in env
    assert "MAD_GPU_IDS" not in script_env(model, ctx, gpus=(), use_devices=False, **common)


class TestPriorityGate:
    def test_a_starving_big_model_gets_its_gpus_while_small_ones_stream(self, tmp_path):
        import threading
        import time

        from pytest_madengine.gpus.locks import GpuLeases

        leases = GpuLeases.for_run(tmp_path, (0, 1))
        stop = threading.Event()

        def stream() -> None:  # small models back to back: one of the two GPUs is always busy
            while not stop.is_set():
                with leases.take(1, priority_after=1e9):
                    time.sleep(0.2)

        streams = [threading.Thread(target=stream) for _ in range(2)]
        for t in streams:
            t.start()
            time.sleep(0.1)  # out of phase
        start = time.monotonic()
        try:
            with leases.take(2, priority_after=0.5) as ids:
                got = time.monotonic() - start
                assert ids == (0, 1)
        finally:
            stop.set()
            for t in streams:
                t.join()
        assert got < 3.0
        with leases.take(2, priority_after=1e9) as ids:  # the gate was given back
            assert ids == (0, 1)

    @pytest.mark.parametrize("priority_after", [0.5, 1e9])
    def test_larger_waiters_go_first_even_without_the_gate(self, tmp_path, priority_after):
        import threading
        import time

        from pytest_madengine.gpus.locks import GpuLeases

        leases = GpuLeases.for_run(tmp_path, (0, 1, 2))
        stop = threading.Event()
        taken: list[float] = []

        def stream() -> None:
            while not stop.is_set():
                with leases.take(1, priority_after=1e9):
                    taken.append(time.monotonic())
                    time.sleep(0.2)

        streams = [threading.Thread(target=stream) for _ in range(3)]
        for t in streams:
            t.start()
            time.sleep(0.07)
        start = time.monotonic()
        try:
            with leases.take(3, priority_after=priority_after) as ids:
                got = time.monotonic()
                assert ids == (0, 1, 2)
        finally:
            stop.set()
            for t in streams:
                t.join()
        assert got - start < 3.0  # the streams never stop: without the gate it would wait for ever
        assert not list((tmp_path / ".gpu-locks" / "waiting").glob("*.lock"))  # announcements removed

    def test_a_dead_waiters_announcement_is_ignored_and_removed(self, tmp_path):
        from pytest_madengine.gpus.locks import GpuLeases

        leases = GpuLeases.for_run(tmp_path, (0, 1))
        stale = tmp_path / ".gpu-locks" / "waiting" / "0002-99999-0.lock"
        stale.parent.mkdir()
        stale.write_text("")  # nobody holds its lock: its process is gone
        with leases.take(1, priority_after=1e9) as ids:
            assert ids == (0,)
        assert not stale.exists()
