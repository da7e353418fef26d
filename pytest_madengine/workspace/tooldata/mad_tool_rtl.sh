# pytest-madengine tool `rocm_trace_lite*`: rocm-trace-lite around the workload, mode $RTL_MODE,
# trace in rocm_trace_lite_output/trace.db; exits with rtl's status, which is the workload's.
mkdir -p rocm_trace_lite_output
exec rtl trace --mode "${RTL_MODE:-lite}" -o rocm_trace_lite_output/trace.db -- "$@"
