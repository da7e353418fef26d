# pytest-madengine tool `therock_check`: which ROCm the environment has (warnings only, never fails).
if command -v rocm-sdk >/dev/null 2>&1 && root=$(rocm-sdk path --root 2>/dev/null); then
    echo "therock_check: TheRock ROCm at $root ($(rocm-sdk version 2>/dev/null || echo 'version unknown'))"
elif [ -f "${ROCM_PATH:-/opt/rocm}/.info/version" ]; then
    echo "therock_check: packaged ROCm $(cat "${ROCM_PATH:-/opt/rocm}/.info/version") at ${ROCM_PATH:-/opt/rocm}"
else
    echo "therock_check: warning: no ROCm found (no rocm-sdk, no ${ROCM_PATH:-/opt/rocm}/.info/version)"
fi
exit 0
