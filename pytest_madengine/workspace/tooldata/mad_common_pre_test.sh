# pytest-madengine's stand-in for madengine's packaged scripts/common/pre_scripts/pre_test.sh:
# says it ran, with its first argument (0 when none).
echo "Pre-Script test called ${1:-0}"
