# pytest-madengine's stand-in for madengine's packaged scripts/common/post_scripts/post_test.sh:
# says it ran, with its first argument (0 when none).
echo "Post-Script test called ${1:-0}"
