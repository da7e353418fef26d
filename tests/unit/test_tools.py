"""Profiling tools (context ``tools``) and ``encapsulate_script``: the packaged catalog, madengine's
stacking order, the wrapper argv, and the helper scripts keeping the workload's exit code."""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.workspace import around, tools

# madengine's scripts/common/tools.json names (2.x), all of which we ship
MADENGINE_NAMES = {
    "rpd", "rocprof", "rocprof_hip_only", "rocprof_sys", "rocprofv3", "rocprofv3_compute", "rocprofv3_memory",
    "rocprofv3_communication", "rocprofv3_full", "rocprofv3_lightweight", "rocprofv3_agent",
    "rocprofv3_agent_full", "rocprofv3_perfetto", "rocprofv3_api_overhead", "rocprofv3_pc_sampling",
    "rocblas_trace", "hipblaslt_trace", "miopen_trace", "tensile_trace", "rccl_trace", "test_tools_A",
    "test_tools_B", "gpu_info_power_profiler", "gpu_info_vram_profiler", "therock_check",
    "rocm_trace_lite", "rocm_trace_lite_default",
}


def toolset(ctx: dict[str, object], root: Path | None = None) -> tools.ToolSet:
    return tools.from_context(ctx, root or Path("/nonexistent"))


def test_the_catalog_has_madengines_names_and_every_file_it_names() -> None:
    cat = tools.catalog()
    assert MADENGINE_NAMES <= set(cat)
    for name, entry in cat.items():
        assert set(entry) <= {"cmd", "env_vars", "pre_scripts", "post_scripts", "requires"}, name
        for token in shlex.split(entry.get("cmd", "")):
            if token.startswith("mad_tool_"):
                assert (tools.TOOLDATA / token).is_file(), (name, token)
        for key in ("pre_scripts", "post_scripts"):
            for step in entry.get(key, []):
                assert (tools.TOOLDATA / step["path"]).is_file(), (name, step)
        ts = toolset({"tools": [{"name": name}]})  # every entry loads
        assert ts.tools[0].name == name


def test_the_packaged_data_is_declared_in_pyproject() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"pytest_madengine.workspace" = ["tooldata/*"]' in text


def test_madengines_stacking_order(tmp_path: Path) -> None:
    (tmp_path / "pre.sh").write_text("true\n")
    (tmp_path / "post.sh").write_text("true\n")
    ctx = {"tools": [{"name": "test_tools_A"}, {"name": "test_tools_B"}], "encapsulate_script": "env X=1",
           "pre_scripts": [{"path": "pre.sh"}], "post_scripts": [{"path": "post.sh"}]}
    ts = toolset(ctx, tmp_path)
    steps = ts.stack(around.steps(ctx, tmp_path))
    shown = [(s.kind, s.name, " ".join(s.args)) for s in steps]
    assert shown == [("pre", "mad_tool_echo.sh", "pre_script B"), ("pre", "mad_tool_echo.sh", "pre_script A"),
                     ("pre", "pre.sh", ""), ("post", "post.sh", ""),
                     ("post", "mad_tool_echo.sh", "post_script A"), ("post", "mad_tool_echo.sh", "post_script B")]
    # the first tool innermost, encapsulate_script next to the script
    assert ts.chain() == ("bash", "mad_tool_echo_cmd.sh", "cmd_B", "bash", "mad_tool_echo_cmd.sh", "cmd_A", "env", "X=1")
    assert [p.name for p in ts.files] == ["mad_tool_echo_cmd.sh"]


def test_a_shared_wrapper_runs_once_and_every_tools_variables_apply() -> None:
    ts = toolset({"tools": [{"name": "rocblas_trace"}, {"name": "miopen_trace"}]})
    assert ts.chain() == ("python3", "mad_tool_library_trace.py")
    assert ts.env == {"ROCBLAS_TRACE": "1", "MIOPEN_TRACE": "1"}


def test_cmd_and_env_vars_overrides(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/wrap.sh").write_text('exec "$@"\n')
    ts = toolset({"tools": [{"name": "gpu_info_power_profiler", "env_vars": {"POWER_SAMPLING_RATE": 0.5},
                             "cmd": "bash tools/wrap.sh --fast"}]}, tmp_path)
    assert ts.chain() == ("bash", "wrap.sh", "--fast")  # the checkout's file, copied into the run folder
    assert ts.files == ((tmp_path / "tools/wrap.sh").resolve(),)
    assert ts.env["POWER_SAMPLING_RATE"] == "0.5" and ts.env["POWER_DEVICE"] == "all"
    assert ts.tools[0].requires == ("bash",)  # an override needs its own command, not the tool's


@pytest.mark.parametrize(("ctx", "message"), [
    ({"tools": [{"name": "rocprof3"}]}, "context key 'tools' entry 0: unknown tool 'rocprof3'; did you mean rocprof"),
    ({"tools": [{"name": "strace"}, {"name": "xyzzy"}]}, "entry 1: unknown tool 'xyzzy'; known: "),
    ({"tools": {"name": "strace"}}, "context key 'tools' must be a list"),
    ({"tools": [{"cmd": "x"}]}, "entry 0 must be an object with a 'name'"),
    ({"tools": [{"name": "strace", "cmd": "echo a && echo b"}]}, "'&&' is not allowed"),
    ({"tools": [{"name": "strace", "cmd": 'echo "a'}]}, "entry 0: 'cmd' cannot be split"),
    ({"tools": [{"name": "strace", "env_vars": ["A=1"]}]}, "entry 0: 'env_vars' must be an object"),
    ({"encapsulate_script": "numactl -i all; rm -rf /"}, "context key 'encapsulate_script': "),
    ({"encapsulate_script": 3}, "context key 'encapsulate_script' must be a string"),
])
def test_bad_tools_are_named(ctx: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=None) as exc:
        toolset(ctx)
    assert message in str(exc.value)


def test_no_tools_no_wrapper() -> None:
    ts = toolset({})
    assert not ts and ts.chain() == () and ts.check_prefix() == () and ts.env == {}


def run(argv: tuple[str, ...] | list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_the_binary_check_names_the_missing_one_and_otherwise_keeps_the_exit_code(tmp_path: Path) -> None:
    ts = toolset({"tools": [{"name": "test_tools_A"}, {"name": "rocprofv3"}]})
    if shutil.which("rocprofv3"):
        pytest.skip("this host has rocprofv3")
    res = run([*ts.check_prefix(), "bash", "-c", "echo ran; exit 5"], tmp_path)
    assert res.returncode == tools.MISSING_EXIT and "ran" not in res.stdout
    assert "tool 'rocprofv3' needs rocprofv3" in res.stderr
    assert tools.missing(tmp_path) == ("rocprofv3", "rocprofv3")
    ok = toolset({"tools": [{"name": "cpu_info_profiler"}]})
    res = run([*ok.check_prefix(), "bash", "-c", "echo ran; exit 5"], tmp_path)
    assert (res.returncode, res.stdout) == (5, "ran\n") and tools.missing(tmp_path) is None


def workdir(tmp_path: Path, ts: tools.ToolSet) -> Path:
    for f in ts.files:
        shutil.copy2(f, tmp_path / f.name)
    return tmp_path


FAIL = (sys.executable, "-c", "import sys; print('working'); sys.exit(7)")


@pytest.mark.parametrize("name", ["strace", "cpu_info_profiler", "rocblas_trace"])
def test_each_cpu_tool_keeps_the_workloads_exit_code_and_writes_its_output(tmp_path: Path, name: str) -> None:
    if name == "strace" and not shutil.which("strace"):
        pytest.skip("strace is not installed (.ci/run installs it)")
    ts = toolset({"tools": [{"name": name}]})
    res = run([*ts.chain(), *FAIL], workdir(tmp_path, ts), **ts.env)
    assert res.returncode == 7, res.stderr
    assert "working" in res.stdout
    (out,) = tools.outputs(tmp_path)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if name == "strace":
        assert out.name == "strace_output.csv" and any(r["syscall"] == "write" for r in rows)
    elif name == "cpu_info_profiler":
        assert out.name == "cpu_info_profiler_output.csv" and rows and float(rows[0]["rss_mb"]) > 0
    else:
        assert out.name == "library_trace.csv" and rows == []


def test_a_signal_ending_the_workload_is_passed_on(tmp_path: Path) -> None:
    ts = toolset({"tools": [{"name": "cpu_info_profiler"}, {"name": "rocblas_trace"}]})
    res = run([*ts.chain(), "bash", "-c", "kill -TERM $$"], workdir(tmp_path, ts), **ts.env)
    assert res.returncode == 128 + 15


def test_the_library_trace_counts_configurations_and_passes_the_rest_on(tmp_path: Path) -> None:
    ts = toolset({"tools": [{"name": "rocblas_trace"}, {"name": "miopen_trace"}]})
    script = ('echo "layer=$ROCBLAS_LAYER cmd=$MIOPEN_ENABLE_LOGGING_CMD"; '
              'for i in 1 2; do echo "./rocblas-bench -f gemm -m 8" >&2; done; '
              'echo "MIOpen(HIP): Command [LogCmdConvolution] ./bin/MIOpenDriver conv -n 1"; exit 3')
    res = run([*ts.chain(), "bash", "-c", script], workdir(tmp_path, ts), **ts.env, MAD_MODEL_NAME="m")
    assert res.returncode == 3
    assert "layer=6 cmd=1" in res.stdout and "rocblas-bench" not in res.stdout  # counted, not logged
    with open(tmp_path / "library_trace.csv", newline="") as fh:
        rows = {(r["library"], r["config"]): (r["model"], r["calls"]) for r in csv.DictReader(fh)}
    assert rows == {("rocblas", "./rocblas-bench -f gemm -m 8"): ("m", "2"),
                    ("miopen", "./bin/MIOpenDriver conv -n 1"): ("m", "1")}


def test_outputs_are_collected_into_the_tools_folder(tmp_path: Path) -> None:
    run_dir, dest = tmp_path / "run", tmp_path / "logs/m_tools"
    (run_dir / "rocprof_output/host").mkdir(parents=True)
    (run_dir / "rocprof_output/host/x_results.db").write_text("db")
    for name in ("library_trace.csv", "gpu_info_power_profiler_output.csv", "k_trace.csv", "perf.csv", "notes.txt"):
        (run_dir / name).write_text("x\n")
    props = tools.collect(run_dir, dest)
    assert sorted(props) == ["tool_output.gpu_info_power_profiler_output.csv", "tool_output.k_trace.csv",
                             "tool_output.library_trace.csv", "tool_output.rocprof_output"]
    assert (dest / "rocprof_output/host/x_results.db").read_text() == "db"
    assert not (dest / "perf.csv").exists()
    assert tools.collect(tmp_path / "empty", dest) == {} and not dest.exists()  # an earlier run's are gone


def test_the_plan_line_names_tools_and_the_chain() -> None:
    ts = toolset({"tools": [{"name": "cpu_info_profiler"}], "encapsulate_script": "env A='x y'"})
    assert ts.describe() == ("tools cpu_info_profiler (checked first: python3), script run by "
                             "python3 mad_tool_profiler.py --mode cpu env 'A=x y'")
    ts = toolset({"tools": ["rocprof", "gpu_info_vram_profiler", "therock_check"]})
    assert ts.describe().startswith("tools rocprof, gpu_info_vram_profiler, therock_check "
                                    "(checked first: rocprofv3 or rocprof, python3, rocm-smi or nvidia-smi), ")


def stub(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/bash\n" + body)
    (bin_dir / name).chmod(0o755)


def with_path(bin_dir: Path) -> str:
    import os

    # only the stubs and what bash, python and coreutils need: no real profiler leaks in
    return os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"])


# Stand-ins printing what the real tools print (nvidia-smi --format=csv,noheader,nounits;
# rocm-smi --json), then, for profilers, running the workload after `--` as they do.
NVIDIA_SMI = 'case "$*" in *power.draw*) printf "0, 71.25\\n1, 80.50\\n" ;; *) printf "0, 1024\\n1, 2048\\n" ;; esac\n'
ROCM_SMI = ('case "$*" in *showpower*) echo \'{"card0": {"Current Socket Graphics Package Power (W)": "150.0"}}\' ;;\n'
            '*) echo \'{"card0": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "1073741824"}}\' ;; esac\n')
PROFILER = 'echo "$(basename "$0") $*" >> profiler_args\nwhile [ "$1" != "--" ]; do shift; done; shift\nexec "$@"\n'


@pytest.mark.parametrize(("smi", "body", "mode", "device", "value"), [
    ("nvidia-smi", NVIDIA_SMI, "power", "1", "80.50"),
    ("nvidia-smi", NVIDIA_SMI, "vram", "0", "1024"),
    ("rocm-smi", ROCM_SMI, "power", "0", "150.0"),
    ("rocm-smi", ROCM_SMI, "vram", "0", "1024.0"),
])
def test_the_gpu_profilers_sample_with_the_smi_the_environment_has(tmp_path: Path, smi: str, body: str, mode: str,
                                                                   device: str, value: str) -> None:
    if smi == "rocm-smi" and any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("a real nvidia-smi would be preferred")
    stub(tmp_path / "bin", smi, body)
    ts = toolset({"tools": [{"name": f"gpu_info_{mode}_profiler", "env_vars": {f"{mode.upper()}_DEVICE": device}}]})
    work = workdir(tmp_path, ts)
    path = with_path(tmp_path / "bin")
    res = run([*ts.check_prefix(), *ts.chain(), "bash", "-c", "sleep 0.3; exit 4"], work, **ts.env, PATH=path)
    assert res.returncode == 4, res.stderr
    (out,) = tools.outputs(work)
    assert out.name == f"gpu_info_{mode}_profiler_output.csv"
    samples = rows_of(out)
    assert samples and {r["device"] for r in samples} == {device}
    assert samples[0]["power_w" if mode == "power" else "vram_used_mb"] == value


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(("have", "expected"), [
    ("rocprofv3", "rocprofv3 --hip-trace -d ./rocprof_output -- bash -c"),
    ("rocprof", "rocprof --hip-trace -d ./rocprof_output bash -c"),  # legacy: no `--`
])
def test_the_rocprof_wrapper_prefers_rocprofv3_and_keeps_the_exit_code(tmp_path: Path, have: str,
                                                                       expected: str) -> None:
    body = PROFILER if have == "rocprofv3" else 'echo "$(basename "$0") $*" >> profiler_args\nshift 3\nexec "$@"\n'
    stub(tmp_path / "bin", have, body)
    ts = toolset({"tools": ["rocprof"]})  # --runtime-trace: v3's, --hip-trace for the legacy one
    work = workdir(tmp_path, ts)
    res = run([*ts.check_prefix(), *ts.chain(), "bash", "-c", "echo profiled; exit 9"], work,
              PATH=with_path(tmp_path / "bin"))
    assert (res.returncode, res.stdout) == (9, "profiled\n"), res.stderr
    args = (work / "profiler_args").read_text()
    assert args.startswith(expected.replace("--hip-trace", "--runtime-trace") if have == "rocprofv3" else expected)
    assert (work / "rocprof_output").is_dir()


def test_rocm_trace_lite_runs_rtl_in_its_mode(tmp_path: Path) -> None:
    stub(tmp_path / "bin", "rtl", PROFILER)
    ts = toolset({"tools": ["rocm_trace_lite_default"]})
    work = workdir(tmp_path, ts)
    res = run([*ts.check_prefix(), *ts.chain(), "bash", "-c", "exit 6"], work, **ts.env, PATH=with_path(tmp_path / "bin"))
    assert res.returncode == 6, res.stderr
    assert (work / "profiler_args").read_text() == "rtl trace --mode default -o rocm_trace_lite_output/trace.db -- bash -c exit 6\n"
