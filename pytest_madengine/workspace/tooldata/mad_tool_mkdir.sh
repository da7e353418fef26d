# pytest-madengine tool pre-script: the output folder a profiler writes into.
mkdir -p -- "$@"
