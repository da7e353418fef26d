# pytest-madengine tool `strace`: the workload's system calls (all processes), summarised as
# CSV in $STRACE_OUTPUT_FILE; exits with the workload's own status (strace passes it on).
out="${STRACE_OUTPUT_FILE:-strace_output.csv}"
raw="$out.raw"
strace -f -c -o "$raw" -- "$@"
status=$?
# `strace -c`: a header, a dashed line, one line per syscall (errors may be blank), a dashed line, the total
awk 'BEGIN { print "syscall,calls,errors,seconds,usecs_per_call,percent_time" }
     /^-/ { sep++; next }
     sep == 1 && NF >= 5 { if (NF >= 6) { e = $5; s = $6 } else { e = 0; s = $5 }
                           print s "," $4 "," e "," $2 "," $3 "," $1 }' "$raw" > "$out" 2>/dev/null
rm -f "$raw"
exit $status
