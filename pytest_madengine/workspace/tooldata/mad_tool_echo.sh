# pytest-madengine tools `test_tools_A`/`test_tools_B`: a pre/post-script that says when it runs.
echo "$*"
