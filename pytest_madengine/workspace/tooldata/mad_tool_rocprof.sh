# pytest-madengine tool `rocprof*`: `bash mad_tool_rocprof.sh <profiler options> -- <workload>`.
# rocprofv3 when the image has it, else the legacy rocprof (whose options differ: v3's
# --runtime-trace becomes --hip-trace); output under ./rocprof_output. Exits with the profiler's
# status, which is the workload's.
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
mkdir -p rocprof_output
if command -v rocprofv3 >/dev/null 2>&1; then
    exec rocprofv3 "${opts[@]}" -d ./rocprof_output -- "$@"
fi
legacy=()
for o in "${opts[@]}"; do
    case "$o" in --runtime-trace) legacy+=(--hip-trace) ;; *) legacy+=("$o") ;; esac
done
exec rocprof "${legacy[@]}" -d ./rocprof_output "$@"
