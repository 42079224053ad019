#!/bin/bash
# Quick re-measure of the full copy, one change at a time: daemon a serves a `cp -al` of the
# reference tree, and each run starts daemon b on an empty tree and times one
# `stagingctl sync --from a`. Per run it prints the wall time, the CPU each daemon spent on
# the sync (utime + stime from /proc/PID/stat), both daemons' peak RSS over the sync and b's phase log lines;
# RSS=1 writes both daemons' RSS in KiB every 100 ms to WORKDIR/quick/rss.N.txt; SETTLE=S
# waits S seconds after each sync and reports b's peak again (its watcher runs after the sync);
# DIFF=1 runs `stagingctl diff --from a` (the dry run: the full copy's itemized plan, to
# WORKDIR/quick/diff.N.txt) instead of the sync, for the daemon's memory while it sends a plan.
# The comparison against rsync and the copy floor is bench/sync.sh; this is for profiling.
#
#   bench/full-copy-quick.sh [--runs N] [--workdir DIR] [--files N]
#
# Env: PERF=1 records `perf record $PERFARGS -p <b>` over each sync into WORKDIR/quick/perf.N.data
# (PERFARGS defaults to "--call-graph dwarf,16384 -F 400"; PERFPID=a profiles the source,
# PERFPID=all the whole machine). BWRAP="heaptrack -o FILE" runs daemon b under that
# command (its peak RSS line is then the wrapper's).
# WORKDIR should be on a journaled filesystem (see bench/analysis.md, "Noise and method").
set -euo pipefail
. "$(dirname "$0")/lib.sh"

runs=3 workdir=${TMPDIR:-/tmp}/stagingd-bench files=150000
while (($#)); do
    case $1 in
    --runs) runs=$2 && shift 2 ;;
    --workdir) workdir=$2 && shift 2 ;;
    --files) files=$2 && shift 2 ;;
    *) die "unknown argument $1 (usage: $0 [--runs N] [--workdir DIR] [--files N])" ;;
    esac
done
repo=$(bench_repo_root)
build_daemon_binaries "$repo"
mkdir -p "$workdir"
tree=$(ensure_tree "$files" 1 "$workdir")
warn_watch_limit "$tree" 2
out=$workdir/quick
[[ -d $out ]] && rm -rf "$out"
mkdir -p "$out/a/state" "$out/b"
cp -al "$tree" "$out/a/tree"
port_a=$(free_port) port_b=$(free_port)
pid_a="" pid_b=""
# The trees go at the end (logs, sync output and perf data stay): a 150,000-file copy left
# on the benchmark filesystem takes ~168,000 of its inodes, and bench/sync.sh needs ~700,000.
cleanup() {
    [[ -n $pid_a ]] && kill -TERM "$pid_a" 2>/dev/null
    [[ -n $pid_b ]] && stop_b
    wait 2>/dev/null || true
    rm -rf "$out/a/tree" "$out/b"
}
trap cleanup EXIT

# stop_b: stops daemon b, and under BWRAP the daemon the wrapper started (heaptrack is a
# script: stopping it alone left the daemon running).
stop_b() {
    pkill -TERM -P "$pid_b" 2>/dev/null || true
    kill -TERM "$pid_b" 2>/dev/null && wait "$pid_b" 2>/dev/null || true
}

# vm_rss PID: the process's resident size in KiB, read without a fork.
vm_rss() {
    local key value _
    while read -r key value _; do
        [[ $key == VmRSS: ]] && printf '%s' "$value" && return
    done <"/proc/$1/status"
}

ready() {
    for _ in $(seq 1 3000); do
        "$ctl" --admin-socket "$1" status --json 2>/dev/null | grep -q '"readiness": "ready"' && return 0
        sleep 0.1
    done
    die "daemon on $1 not ready after 5 minutes"
}

RUST_LOG=info "$stagingd" --name a --root "$out/a/tree" --state-dir "$out/a/state" \
    --listen "127.0.0.1:$port_a" --admin-socket "$out/a.sock" >"$out/a.log" 2>&1 &
pid_a=$!
ready "$out/a.sock"
"$ctl" --admin-socket "$out/a.sock" pool serve --bootstrap --reason quick-bench >/dev/null
warm=$(warm_read_cmd "$out/a/tree")

for ((r = 1; r <= runs; r++)); do
    if [[ -n $pid_b ]]; then
        stop_b
        pid_b=""
    fi
    rm -rf "$out/b"
    mkdir -p "$out/b/state" "$out/b/tree"
    # shellcheck disable=SC2086 # BWRAP is a command line (e.g. "heaptrack -o FILE")
    RUST_LOG="info,sync=debug" ${BWRAP:-} "$stagingd" --name b --root "$out/b/tree" --state-dir "$out/b/state" \
        --listen "127.0.0.1:$port_b" --admin-socket "$out/b.sock" --peer "a=http://127.0.0.1:$port_a" \
        >"$out/b.$r.log" 2>&1 &
    pid_b=$!
    ready "$out/b.sock"
    sync
    sh -c "$warm"
    perf_pid=""
    if [[ ${PERF:-0} == 1 ]]; then
        target=(-p "$pid_b")
        [[ ${PERFPID:-b} == a ]] && target=(-p "$pid_a")
        [[ ${PERFPID:-b} == all ]] && target=(-a)
        # shellcheck disable=SC2086 # PERFARGS is a list of perf options
        perf record ${PERFARGS:---call-graph dwarf,16384 -F 400} -o "$out/perf.$r.data" "${target[@]}" 2>"$out/perf.$r.log" &
        perf_pid=$!
        sleep 1 # perf attaches asynchronously; nothing here waits on its output
    fi
    # Peak RSS from here on: writing 5 to clear_refs resets VmHWM to the current RSS.
    echo 5 >"/proc/$pid_a/clear_refs" && echo 5 >"/proc/$pid_b/clear_refs"
    cpu_a0=$(proc_cpu_ticks "$pid_a") cpu_b0=$(proc_cpu_ticks "$pid_b")
    rss_pid=""
    if [[ ${RSS:-0} == 1 ]]; then
        # Both daemons' resident size every 100 ms, to tell which phase makes the peak
        # (bash builtins only: a fork per sample would take CPU from the daemons).
        (while :; do
            printf '%s %s %s\n' "$EPOCHREALTIME" "$(vm_rss "$pid_a")" "$(vm_rss "$pid_b")"
            read -rt 0.1 <> <(:) || true
        done) >"$out/rss.$r.txt" 2>/dev/null &
        rss_pid=$!
    fi
    : >"$out/times"
    if [[ ${DIFF:-0} == 1 ]]; then
        time_cmd "$out/times" "$ctl" --admin-socket "$out/b.sock" diff --from a >"$out/diff.$r.txt" ||
            die "run $r: diff failed; see $out/diff.$r.txt and $out/b.$r.log"
        printf 'run %d (diff): %s s wall, %s plan lines; peak RSS b %s KiB\n' "$r" "$(cat "$out/times")" \
            "$(grep -c . "$out/diff.$r.txt")" "$(proc_status_kib "$pid_b" VmHWM)"
        [[ -n $rss_pid ]] && kill "$rss_pid" && wait "$rss_pid" 2>/dev/null || true
        continue
    fi
    time_cmd "$out/times" "$ctl" --admin-socket "$out/b.sock" sync --from a --json >"$out/sync.$r.json"
    cpu_a1=$(proc_cpu_ticks "$pid_a") cpu_b1=$(proc_cpu_ticks "$pid_b")
    hwm_b=$(proc_status_kib "$pid_b" VmHWM)
    if [[ -n ${SETTLE:-} ]]; then
        # What b does after the sync returns (its watcher folds in the switch's events)
        # counts towards its peak too: wait SETTLE seconds and read the peak again.
        sleep "$SETTLE"
        printf 'run %d: peak RSS b %s KiB at the end of the sync, %s KiB %s s later\n' "$r" "$hwm_b" \
            "$(proc_status_kib "$pid_b" VmHWM)" "$SETTLE"
    fi
    [[ -n $rss_pid ]] && kill "$rss_pid" && wait "$rss_pid" 2>/dev/null || true
    [[ -n $perf_pid ]] && kill -INT "$perf_pid" && wait "$perf_pid" || true
    grep -q '"outcome": "applied"' "$out/sync.$r.json" || die "run $r: sync not applied; see $out/sync.$r.json and $out/b.$r.log"
    tick=$(getconf CLK_TCK)
    printf 'run %d: %s s wall; cpu a %s s, b %s s; peak RSS a %s KiB, b %s KiB\n' "$r" "$(cat "$out/times")" \
        "$(awk -v d=$((cpu_a1 - cpu_a0)) -v t="$tick" 'BEGIN { printf "%.2f", d / t }')" \
        "$(awk -v d=$((cpu_b1 - cpu_b0)) -v t="$tick" 'BEGIN { printf "%.2f", d / t }')" \
        "$(proc_status_kib "$pid_a" VmHWM)" "$hwm_b"
    grep -E 'planned|staged|fetched|apply' "$out/b.$r.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' | cut -c1-220
done
