# pytest-madengine tools `test_tools_A`/`test_tools_B`: a command wrapper that says when it runs.
echo "$1"
shift
exec "$@"
