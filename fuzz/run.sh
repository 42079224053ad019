#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer). Not part of CI.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   run each target (default: all) SECONDS (default 60)
#   fuzz/run.sh replay                  run every input in fuzz/regressions/TARGET/ once
#
# Crashes are written to fuzz/artifacts/TARGET/, the growing corpus to
# fuzz/corpus/TARGET/ (both ignored by git). Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# SANITIZER=none skips AddressSanitizer (the default is address).
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo fuzz passes nightly-only flags (-Zsanitizer, the sancov passes); the
# stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
sanitizer="${SANITIZER:-address}"

cargo fuzz build --sanitizer "$sanitizer"

if [ "${1:-}" = replay ]; then
    failed=()
    for input in fuzz/regressions/*/*; do
        target="$(basename "$(dirname "$input")")"
        if cargo fuzz run --sanitizer "$sanitizer" "$target" "$input" >"/tmp/fuzz-replay.$$" 2>&1; then
            echo "ok    $input"
        else
            echo "CRASH $input: $(grep -m1 -A1 'panicked at' "/tmp/fuzz-replay.$$" | tr '\n' ' ' | cut -c1-200)"
            failed+=("$input")
        fi
    done
    rm -f "/tmp/fuzz-replay.$$"
    [ "${#failed[@]}" -eq 0 ] || { echo "${#failed[@]} regression input(s) still crash"; exit 1; }
    echo "no regression input crashes"
    exit 0
fi

seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Per-target libFuzzer options: inputs past MAX_PATH_BYTES (4096, libFuzzer's
# default -max_len) for the path rules, and room for deep trees in the cache.
extra_args() {
    case "$1" in
        path_rules) echo "-max_len=8192" ;;
        cache_decode) echo "-max_len=16384" ;;
        *) echo "" ;;
    esac
}

failed=()
for target in "${targets[@]}"; do
    echo "=== $target: ${seconds}s"
    # shellcheck disable=SC2046
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" -- -max_total_time="$seconds" $(extra_args "$target"); then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (crashing inputs in fuzz/artifacts/)"
    exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s without a crash"
