"""pytest-madengine tools ``rocblas_trace``, ``hipblaslt_trace``, ``miopen_trace``,
``tensile_trace``, ``rccl_trace``: one wrapper for all of them (listed together, it runs once).

``python3 mad_tool_library_trace.py <workload argv>`` turns on the logging of every library
whose ``<LIB>_TRACE`` variable is set, runs the workload with its output (stderr merged into
stdout) passed through, except the library's own configuration lines, which are counted into
``OUTPUT_FILE`` (default ``library_trace.csv``: jobid, created_date, model, library, config,
calls), and exits with the workload's own status (madengine's wrapper loses it).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime

# library -> (variable turning it on, environment its logging needs, line patterns; group 1 = config)
LIBRARIES: dict[str, tuple[str, dict[str, str], list[tuple[str, re.Pattern[str]]]]] = {
    "rocblas": ("ROCBLAS_TRACE", {"ROCBLAS_LAYER": "6"},
                [("rocblas", re.compile(r"(\./rocblas-bench .*)$")),
                 ("rocblas_function", re.compile(r"^(.*rocblas_function: .*)$"))]),
    "hipblaslt": ("HIPBLASLT_TRACE", {"HIPBLASLT_LOG_MASK": "32"},
                  [("hipblaslt", re.compile(r"(hipblaslt-bench .*)$"))]),
    "tensile": ("TENSILE_TRACE", {"TENSILE_DB": "0x8000"},
                [("tensile", re.compile(r"^Running kernel: (.*)$"))]),
    "miopen": ("MIOPEN_TRACE", {"MIOPEN_ENABLE_LOGGING_CMD": "1"},
               [("miopen", re.compile(r"MIOpen\(HIP\): Command \[.*\] (\./bin/MIOpenDriver .*)$"))]),
    "rccl": ("RCCL_TRACE", {"NCCL_DEBUG": "INFO", "RCCL_KERNEL_COLL_TRACE_ENABLE": "1",
                            "NCCL_DEBUG_SUBSYS": "INIT,COLL"},
             [("rccl", re.compile(r"NCCL INFO (\w+: opCount .*)$"))]),
}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: mad_tool_library_trace.py <workload argv>", file=sys.stderr)
        return 2
    on = [lib for lib, (var, _, _) in LIBRARIES.items() if os.environ.get(var, "") not in ("", "0")]
    env = dict(os.environ)
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for lib in on:
        env.update(LIBRARIES[lib][1])
        patterns += LIBRARIES[lib][2]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace", bufsize=1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # stopping us stops the workload
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    counts: Counter[tuple[str, str]] = Counter()
    assert child.stdout is not None
    for line in child.stdout:
        hit = False
        for name, pattern in patterns:
            m = pattern.search(line.rstrip("\n"))
            if m:
                counts[(name, m.group(1))] += 1
                hit = True
        if not hit:
            sys.stdout.write(line)
            sys.stdout.flush()
    code = child.wait()
    date = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(os.environ.get("OUTPUT_FILE") or "library_trace.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["jobid", "created_date", "model", "library", "config", "calls"])
        for (library, config), calls in counts.items():
            out.writerow([os.environ.get("JENKINS_BUILD_NUMBER", "0"), date,
                          os.environ.get("MAD_MODEL_NAME", ""), library, config, calls])
    print(f"library trace: {sum(counts.values())} calls of {len(counts)} configurations "
          f"({', '.join(on) or 'no library selected'})")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
