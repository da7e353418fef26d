#!/usr/bin/env bash
# A stand-in workload that needs its data: every folder in MAD_DATAHOME (comma list, one per
# dataname of the model's `data`) must hold words.txt. --expect-readonly: writing there must fail.
set -euo pipefail
readonly_check=0
for arg in "$@"; do
    case "$arg" in
        --expect-readonly) readonly_check=1 ;;
        *) echo "ignoring argument: $arg" ;;
    esac
done
echo "model=$MAD_MODEL_NAME dataname=$MAD_DATANAME datahome=${MAD_DATAHOME:-}"
: "${MAD_DATAHOME:?no MAD_DATAHOME: the data was not provided}"
total=0
IFS=, read -ra homes <<< "$MAD_DATAHOME"
for home in "${homes[@]}"; do
    test -f "$home/words.txt" || { echo "missing $home/words.txt"; ls -la "$home" || true; exit 1; }
    n=$(wc -l < "$home/words.txt")
    echo "data $home: $n words"
    total=$(( total + n ))
    if [ "$readonly_check" = 1 ]; then
        if touch "$home/.written" 2>/dev/null; then echo "data $home is writable"; exit 1; fi
        echo "data $home is read-only"
    fi
done
echo "performance: $total words_read"
