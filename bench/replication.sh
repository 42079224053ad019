#!/usr/bin/env bash
# Replication benchmark ([M4], DESIGN.md §5 "change noticed by the watcher: manifest current
# within 1 s", §6 "automatic replication follows a serving master within seconds"): daemon a
# serves a `cp -al` copy of the reference tree, daemon b follows it (`--replicate-from a`) from a
# `cp -a` copy equal to it, so no initial full copy is needed.
#   1. change -> b equal   C single-file changes in a (modify / add / delete in turn, each
#                          write-to-temp + rename like mutate_tree.py); per change: time until a's
#                          own manifest root changed (watcher) and until b's root equals a's new
#                          root (watcher + replication), polling both status --json every ~20 ms
#   2. quiet daemons       CPU (% of one core, utime+stime from /proc/PID/stat) of each daemon
#                          over S seconds without changes; VmRSS and VmHWM per file tracked
#   3. burst               10,000 new small files written as fast as possible into a new
#                          directory of a: time until a's manifest has them all and until b
#                          equals a; how many syncs b recorded for it (history --json)
# Prints a Markdown table on stdout for BENCHMARKS.md; progress goes to stderr. Writes only under
# the work directory (reference tree, copies in WORKDIR/replication-run/ which are removed at the
# end unless --keep, raw results and daemon logs in WORKDIR/last-replication/) and a socket
# directory under ${TMPDIR:-/tmp}. Needs ~1 copy of the tree of disk (~2 GB at 150,000 files).
#
# usage: bench/replication.sh [--files N] [--changes C] [--workdir DIR] [--quiet S] [--burst F] [--keep]
#   --files N       files in the generated reference tree (default 150000; gen_tree.py --seed 1)
#   --changes C     single-file changes timed in step 1; medians are reported (default 20)
#   --workdir DIR   where the tree (reused, keyed by N), copies and raw results live
#                   (default ${TMPDIR:-/tmp}/stagingd-bench)
#   --quiet S       seconds without changes over which step 2 measures CPU (default 60)
#   --burst F       new files written in step 3 (default 10000)
#   --keep          keep the tree copies and state dirs in WORKDIR/replication-run/ at the end
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
repo=$(bench_repo_root)

usage() { # usage [EXIT]: the header's usage lines, on stdout for --help, stderr otherwise
    local fd=2
    [[ ${1:-2} == 0 ]] && fd=1
    sed -n '/^# usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&"$fd"
    exit "${1:-2}"
}

files=150000 changes=20 workdir=${TMPDIR:-/tmp}/stagingd-bench quiet=60 burst=10000 keep=0
seed=1 change_timeout=60 burst_timeout=600
while (($#)); do
    case $1 in
        --files) files=${2:?--files needs a value}; shift 2 ;;
        --changes) changes=${2:?--changes needs a value}; shift 2 ;;
        --workdir) workdir=${2:?--workdir needs a value}; shift 2 ;;
        --quiet) quiet=${2:?--quiet needs a value}; shift 2 ;;
        --burst) burst=${2:?--burst needs a value}; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ $files =~ ^[1-9][0-9]*$ ]] || die "--files must be a positive integer, got '$files'"
[[ $changes =~ ^[1-9][0-9]*$ ]] || die "--changes must be a positive integer, got '$changes'"
[[ $quiet =~ ^[1-9][0-9]*$ ]] || die "--quiet must be a positive whole number of seconds, got '$quiet'"
[[ $burst =~ ^[1-9][0-9]*$ ]] || die "--burst must be a positive integer, got '$burst'"

# 1. tools
ensure_tools python3:python3 rsync:rsync find:findutils getconf:libc-bin
command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build stagingd and stagingctl)"
clk_tck=$(getconf CLK_TCK)

mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd -P)
bench_out_dir "$workdir" last-replication
run_dir=$workdir/replication-run

# 2. build
build_daemon_binaries "$repo"
commit=$(commit_desc "$repo") # now: others may commit while this runs

# 3. reference tree (generated once per N, then reused; never modified: a serves a `cp -al`
#    hard-link copy, and every change to it is write-to-temp + rename or unlink)
tree=$(ensure_tree "$files" "$seed" "$workdir") || exit 1
warn_watch_limit "$tree" 2

# --- daemons ---------------------------------------------------------------------------------
declare -A d_root d_state d_port d_sock d_log d_pid
sock_dir=$(mktemp -d "${TMPDIR:-/tmp}/stagingd-bench-sock.XXXXXX")

# define_daemon NAME ROOT: paths and a port for daemon NAME (its state under run_dir).
define_daemon() {
    local name=$1
    d_root[$name]=$2
    d_state[$name]=$run_dir/state-$name
    d_port[$name]=$(free_port)
    d_sock[$name]=$sock_dir/$name.sock
    d_log[$name]=$BENCH_OUT/daemon-$name.log
    d_pid[$name]=""
}

# start_daemon NAME [ARG...]: starts stagingd NAME in the background with the extra ARGs
# (RUST_LOG=info, log appended to BENCH_OUT/daemon-NAME.log) and waits until its tree is ready.
start_daemon() {
    local name=$1
    shift
    mkdir -p "${d_state[$name]}"
    printf '=== bench: start %s at %s\n' "$name" "$(date -u +%T.%N)" >>"${d_log[$name]}"
    RUST_LOG=info "$stagingd" --name "$name" --root "${d_root[$name]}" --state-dir "${d_state[$name]}" \
        --listen "127.0.0.1:${d_port[$name]}" --admin-socket "${d_sock[$name]}" "$@" >>"${d_log[$name]}" 2>&1 &
    d_pid[$name]=$!
    wait_ready "$name"
}

# status_field NAME EXPR -> EXPR evaluated with j = NAME's `status --json` (empty on failure).
status_field() {
    "$ctl" --admin-socket "${d_sock[$1]}" status --json 2>/dev/null |
        python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null
}

# check_alive NAME: dies (with the log's tail) if daemon NAME has exited.
check_alive() {
    kill -0 "${d_pid[$1]}" 2>/dev/null && return 0
    sed 's/\x1b\[[0-9;]*m//g' "${d_log[$1]}" | tail -n 30 >&2
    die "stagingd $1 (pid ${d_pid[$1]}) exited; log: ${d_log[$1]}"
}

# wait_ready NAME: polls `status --json` until trees[0].readiness is ready (5 minutes at most).
wait_ready() {
    local name=$1 i state=""
    for ((i = 0; i < 3000; i++)); do
        check_alive "$name"
        state=$(status_field "$name" 'j["trees"][0]["readiness"]') || state=""
        [[ $state == ready ]] && return 0
        sleep 0.1
    done
    die "stagingd $name not ready after 5 minutes (last readiness '$state'); log: ${d_log[$name]}"
}

ctl_of() { local name=$1; shift; "$ctl" --admin-socket "${d_sock[$name]}" "$@"; }

cleanup() {
    local name pid i
    for name in "${!d_pid[@]}"; do
        pid=${d_pid[$name]}
        [[ -n $pid ]] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && { log "stagingd $name (pid $pid) still running 30 s after SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$sock_dir"
    if ((keep)); then
        log "keeping the copies and state dirs in $run_dir"
    elif [[ -d $run_dir ]]; then
        log "removing the copies in $run_dir"
        rm -rf "$run_dir"
    fi
}
trap cleanup EXIT

# jget FILE EXPR -> prints the Python expression EXPR evaluated with j = the JSON in FILE.
jget() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# manifest_root DIR -> the offline manifest root of DIR (stagingctl manifest; dies if incomplete).
manifest_root() {
    local out=$BENCH_OUT/manifest.json
    "$ctl" manifest "$1" --json >"$out" || die "stagingctl manifest $1 failed"
    [[ $(jget "$out" 'j["complete"]') == True ]] || die "stagingctl manifest $1: not complete (see $out)"
    jget "$out" 'j["root"]'
}

# history_ids NAME OUT: the ids of every record in NAME's `history --json`, one per line.
history_ids() {
    ctl_of "$1" history --json >"$2.json" || die "stagingctl history --json failed on $1"
    jget "$2.json" '"\n".join(r["id"] for r in j)' >"$2"
}

# ticks_to_s TICKS_BEFORE TICKS_AFTER -> CPU seconds between the two (CLK_TCK ticks)
ticks_to_s() { awk -v a="$1" -v b="$2" -v t="$clk_tck" 'BEGIN { printf "%.3f\n", (b - a) / t }'; }

# --- the prober: one Python process per step polls both daemons every ~20 ms ------------------
cat >"$BENCH_OUT/probe.py" <<'EOF'
"""Makes changes in a's tree and polls `stagingctl status --json` of a and b until b equals a.

probe.py changes CTL SOCK_A SOCK_B ROOT_A COUNT TIMEOUT OUT_JSONL
probe.py burst   CTL SOCK_A SOCK_B ROOT_A FILES TIMEOUT OUT_JSON

Times are time.monotonic() differences from t0 = the moment the change is complete (after the
rename or unlink; for a burst, the first write). Each poll runs `status --json` on a, then on b;
an event's time is when the answer showing it arrived (an upper bound, within one poll).
"""
import json, os, random, subprocess, sys, time

POLL = 0.020
STABLE = 1.0  # after b first equals a: a's root must stay put this long, else keep polling


def status(ctl, sock):
    p = subprocess.run([ctl, "--admin-socket", sock, "status", "--json"], capture_output=True)
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip()
    j = json.loads(p.stdout)
    t = j["trees"][0]
    return {"root": t["root"], "files": t["files"], "readiness": t["readiness"],
            "replication": j.get("replication")}, None


class Poller:
    def __init__(self, ctl, sa, sb):
        self.ctl, self.sa, self.sb = ctl, sa, sb
        self.errors = []

    def both(self):
        a, ea = status(self.ctl, self.sa)
        ta = time.monotonic()
        b, eb = status(self.ctl, self.sb)
        tb = time.monotonic()
        for who, e in (("a", ea), ("b", eb)):
            if e is not None:
                self.errors.append(f"{who}: {e}")
        return a, ta, b, tb

    def wait(self, t0, prev_root, timeout, a_done):
        """Polls until b's root == a's root and a_done(a) (a's root moved on from prev_root for a
        single change), and a's root then stays put for STABLE s. Returns a dict of times."""
        t_a = t_b = None
        a_roots, b_roots, polls = [], [], 0
        final = None
        while True:
            a, ta, b, tb = self.both()
            polls += 1
            if a and (not a_roots or a_roots[-1] != a["root"]):
                a_roots.append(a["root"])
            if b and (not b_roots or b_roots[-1] != b["root"]):
                b_roots.append(b["root"])
            if a and t_a is None and a_done(a):
                t_a = ta - t0
            equal = a and b and a_done(a) and b["root"] == a["root"] and a["readiness"] == "ready"
            if equal:
                if final is None or final[0] != a["root"]:
                    final = (a["root"], tb - t0, tb)
                elif tb - final[2] >= STABLE:
                    return {"watcher_s": t_a, "replicated_s": final[1], "root": final[0],
                            "a_roots_seen": a_roots, "b_roots_seen": b_roots, "polls": polls,
                            "files_a": a["files"]}
            else:
                final = None
            if time.monotonic() - t0 > timeout:
                sys.exit(f"timeout after {timeout} s: a {a}, b {b}; a's roots seen {a_roots}, "
                         f"b's roots seen {b_roots}; status errors: {self.errors[-5:]}")
            time.sleep(POLL)


def regular_files(root):
    out = []
    for dp, dns, fns in os.walk(root):
        dns[:] = sorted(d for d in dns if d != ".stagingd")
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            if not fn.startswith(".") and os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def replace(path, data, mode):
    d, b = os.path.split(path)
    tmp = os.path.join(d, ".bench-tmp-" + b)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def changes(ctl, sa, sb, root, count, timeout, out):
    rng = random.Random(4242)
    files = regular_files(root)
    poller = Poller(ctl, sa, sb)
    with open(out, "w") as o:
        for i in range(count):
            a, _, b, _ = poller.both()
            if not a or not b or a["root"] != b["root"]:
                sys.exit(f"change {i + 1}: a and b differ before the change: a {a}, b {b}")
            prev = a["root"]
            kind = ("modify", "add", "delete")[i % 3]
            if kind == "modify":
                p = files[rng.randrange(len(files))]
                st = os.lstat(p)
                with open(p, "rb") as f:
                    data = f.read()
                replace(p, data + f"\n// bench change {i + 1}\n".encode(), st.st_mode & 0o7777)
            elif kind == "add":
                d = os.path.dirname(files[rng.randrange(len(files))])
                p = os.path.join(d, f"bench-added-{i + 1}.php")
                replace(p, f"<?php\n// bench file {i + 1}\n".encode() * (1 + rng.randrange(200)), 0o644)
                files.append(p)
            else:
                p = files.pop(rng.randrange(len(files)))
                os.unlink(p)
            t0 = time.monotonic()
            r = poller.wait(t0, prev, timeout, lambda a: a["root"] != prev)
            r.update(change=i + 1, kind=kind, path=os.path.relpath(p, root), root_before=prev)
            o.write(json.dumps(r) + "\n")
            o.flush()
            print(f"[bench]   change {i + 1}/{count} ({kind} {os.path.relpath(p, root)}): a's manifest "
                  f"{r['watcher_s'] * 1000:.0f} ms, b equal {r['replicated_s'] * 1000:.0f} ms "
                  f"(a's roots seen {len(r['a_roots_seen'])}, b's {len(r['b_roots_seen'])})", file=sys.stderr)
            time.sleep(0.5)
    if poller.errors:
        print(f"[bench]   status errors while polling: {len(poller.errors)}, e.g. {poller.errors[:3]}", file=sys.stderr)


def burst(ctl, sa, sb, root, n, timeout, out):
    poller = Poller(ctl, sa, sb)
    a, _, b, _ = poller.both()
    if not a or not b or a["root"] != b["root"]:
        sys.exit(f"burst: a and b differ before it: a {a}, b {b}")
    base = a["files"]
    rng = random.Random(77)
    blobs = [rng.randbytes(rng.randrange(100, 4000)) for _ in range(64)]
    d = os.path.join(root, "bench-burst")
    start_wall = time.time()
    t0 = time.monotonic()
    os.mkdir(d)
    for i in range(n):
        fd = os.open(os.path.join(d, f"f{i:05d}.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, blobs[i % 64] + str(i).encode())
        os.close(fd)
    written = time.monotonic() - t0
    print(f"[bench]   wrote {n} files into {d} in {written:.3f} s", file=sys.stderr)
    r = poller.wait(t0, a["root"], timeout, lambda a: a["files"] == base + n)
    r.update(files=n, written_s=written, start_unix=start_wall, files_before=base,
             status_errors=poller.errors)
    json.dump(r, open(out, "w"))


if __name__ == "__main__":
    cmd, ctl, sa, sb, root, num, timeout, out = sys.argv[1:]
    (changes if cmd == "changes" else burst)(ctl, sa, sb, root, int(num), float(timeout), out)
EOF

# --- setup ---------------------------------------------------------------------------------
if [[ -e $run_dir ]]; then
    log "removing the previous run's copies in $run_dir"
    rm -rf "$run_dir"
fi
mkdir -p "$run_dir"
A=$run_dir/a-tree B=$run_dir/b-tree

log "reference root: stagingctl manifest $tree --json"
"$ctl" manifest "$tree" --json >"$BENCH_OUT/reference.json" || die "stagingctl manifest $tree failed"
ref_root=$(jget "$BENCH_OUT/reference.json" 'j["root"]')
ref_files=$(jget "$BENCH_OUT/reference.json" 'j["files"]')
ref_bytes=$(jget "$BENCH_OUT/reference.json" 'j["bytes"]')
log "copying the tree for a: cp -al $tree $A"
cp -al "$tree" "$A"
log "copying a's tree for b: cp -a $A $B"
cp -a "$A" "$B"
root_a0=$(manifest_root "$A") || exit 1
root_b0=$(manifest_root "$B") || exit 1
[[ $root_a0 == "$ref_root" && $root_b0 == "$ref_root" ]] ||
    die "copies differ from the reference: reference $ref_root, a $root_a0, b $root_b0"
log "a and b equal before starting: root $ref_root (stagingctl manifest DIR --json on both)"

define_daemon a "$A"
define_daemon b "$B"
log "starting a: stagingd --name a --root $A --state-dir ${d_state[a]} --listen 127.0.0.1:${d_port[a]} --admin-socket ${d_sock[a]}"
t_start=$(date +%s.%N)
start_daemon a
log "a ready after $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
ctl_of a pool serve --bootstrap --reason bench >&2 || die "stagingctl pool serve --bootstrap failed on a"
log "starting b: ... --peer a=http://127.0.0.1:${d_port[a]} --replicate-from a"
t_start=$(date +%s.%N)
start_daemon b --peer "a=http://127.0.0.1:${d_port[a]}" --replicate-from a
log "b ready after $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
for ((i = 0; i < 600; i++)); do
    check_alive a
    check_alive b
    ra=$(status_field a 'j["trees"][0]["root"]') || ra=""
    rb=$(status_field b 'j["trees"][0]["root"]') || rb=""
    phase=$(status_field b 'j["replication"]["phase"]') || phase=""
    [[ -n $ra && $ra == "$rb" && $phase == following ]] && break
    sleep 0.1
done
[[ -n $ra && $ra == "$rb" ]] || die "b's root ($rb) never equalled a's ($ra) after start; replication phase '$phase'; logs: $BENCH_OUT/daemon-*.log"
[[ $phase == following ]] || die "b's replication phase is '$phase', not following; see ctl status on b and $BENCH_OUT/daemon-b.log"
[[ $ra == "$ref_root" ]] || die "a's daemon root $ra differs from the offline manifest root $ref_root"
log "both ready, b following a, roots equal: $ra"
pid_a=${d_pid[a]} pid_b=${d_pid[b]}
for name in a b; do
    [[ $(</proc/"${d_pid[$name]}"/comm) == stagingd ]] || die "pid ${d_pid[$name]} of $name is not stagingd"
done
history_ids b "$BENCH_OUT/history0"
step1_utc=$(date -u +%FT%T.%6NZ) # to place the daemons' log lines relative to the steps

# --- 1. change -> b equal --------------------------------------------------------------------
log "step 1: $changes single-file changes in a (modify, add, delete in turn), polling status --json of a and b every ~20 ms"
python3 "$BENCH_OUT/probe.py" changes "$ctl" "${d_sock[a]}" "${d_sock[b]}" "$A" "$changes" "$change_timeout" \
    "$BENCH_OUT/changes.jsonl" || {
    check_alive a
    check_alive b
    die "step 1 failed (above); logs: $BENCH_OUT/daemon-a.log, $BENCH_OUT/daemon-b.log"
}
history_ids b "$BENCH_OUT/history1"
syncs_changes=$(comm -13 <(sort "$BENCH_OUT/history0") <(sort "$BENCH_OUT/history1") | grep -c . || true)

# --- 2. quiet daemons ------------------------------------------------------------------------
log "step 2: settling 5 s, then $quiet s without changes or status calls: utime+stime from /proc/PID/stat"
sleep 5
check_alive a
check_alive b
ca0=$(proc_cpu_ticks "$pid_a") cb0=$(proc_cpu_ticks "$pid_b")
tq0=$(date +%s.%N)
sleep "$quiet"
ca1=$(proc_cpu_ticks "$pid_a") cb1=$(proc_cpu_ticks "$pid_b")
tq1=$(date +%s.%N)
rss_a=$(proc_status_kib "$pid_a" VmRSS) hwm_a=$(proc_status_kib "$pid_a" VmHWM)
rss_b=$(proc_status_kib "$pid_b" VmRSS) hwm_b=$(proc_status_kib "$pid_b" VmHWM)
threads_a=$(awk '$1 == "Threads:" { print $2 }' "/proc/$pid_a/status")
threads_b=$(awk '$1 == "Threads:" { print $2 }' "/proc/$pid_b/status")
quiet_s=$(awk -v a="$tq0" -v b="$tq1" 'BEGIN { printf "%.3f", b - a }')
cpu_a=$(ticks_to_s "$ca0" "$ca1") cpu_b=$(ticks_to_s "$cb0" "$cb1")
files_a=$(status_field a 'j["trees"][0]["files"]') files_b=$(status_field b 'j["trees"][0]["files"]')
log "quiet: a $cpu_a s CPU, b $cpu_b s CPU over $quiet_s s; VmRSS a $rss_a KiB, b $rss_b KiB"

# --- 3. burst --------------------------------------------------------------------------------
log "step 3: $burst new files into $A/bench-burst as fast as possible, polling until b equals a"
history_ids b "$BENCH_OUT/history2"
step3_utc=$(date -u +%FT%T.%6NZ)
ca0=$(proc_cpu_ticks "$pid_a") cb0=$(proc_cpu_ticks "$pid_b")
python3 "$BENCH_OUT/probe.py" burst "$ctl" "${d_sock[a]}" "${d_sock[b]}" "$A" "$burst" "$burst_timeout" \
    "$BENCH_OUT/burst.json" || {
    check_alive a
    check_alive b
    die "step 3 failed (above); logs: $BENCH_OUT/daemon-a.log, $BENCH_OUT/daemon-b.log"
}
ca1=$(proc_cpu_ticks "$pid_a") cb1=$(proc_cpu_ticks "$pid_b")
burst_cpu_a=$(ticks_to_s "$ca0" "$ca1") burst_cpu_b=$(ticks_to_s "$cb0" "$cb1")
hwm_a_end=$(proc_status_kib "$pid_a" VmHWM) hwm_b_end=$(proc_status_kib "$pid_b" VmHWM)
history_ids b "$BENCH_OUT/history3"
comm -13 <(sort "$BENCH_OUT/history2") <(sort "$BENCH_OUT/history3") >"$BENCH_OUT/burst_sync_ids"
log "burst: $(jget "$BENCH_OUT/burst.json" '"a has all files after %.3f s, b equal after %.3f s" % (j["watcher_s"], j["replicated_s"])'); $(grep -c . "$BENCH_OUT/burst_sync_ids" || true) syncs recorded by b"

# --- final checks: the daemons' roots match offline manifests of both trees ------------------
check_alive a
check_alive b
ra=$(status_field a 'j["trees"][0]["root"]') rb=$(status_field b 'j["trees"][0]["root"]')
ctl_of b status --json >"$BENCH_OUT/status_b_end.json" || die "status on b failed"
ctl_of a status --json >"$BENCH_OUT/status_a_end.json" || die "status on a failed"
for name in a b; do ctl_of "$name" history --json >"$BENCH_OUT/history_$name.json" || true; done
off_a=$(manifest_root "$A") || exit 1
off_b=$(manifest_root "$B") || exit 1
[[ $ra == "$rb" && $ra == "$off_a" && $off_b == "$off_a" ]] ||
    die "final roots disagree: a's daemon $ra, b's daemon $rb, offline a $off_a, offline b $off_b"
diff=$(rsync -naci --delete --exclude=/.stagingd "$A/" "$B/") || die "rsync -naci failed"
[[ -z $diff ]] || {
    printf '%s\n' "$diff" | head -n 20 >&2
    die "rsync -naci --delete --exclude=/.stagingd $A/ $B/ lists differences (above)"
}
log "final: daemon roots of a and b equal the offline manifests of both trees ($ra); rsync -naci lists nothing"

# daemon logs: warnings and errors (ANSI stripped)
for name in a b; do
    sed 's/\x1b\[[0-9;]*m//g' "${d_log[$name]}" | grep -E '\b(WARN|ERROR)\b' >"$BENCH_OUT/problems-$name.log" || true
    n=$(grep -c . "$BENCH_OUT/problems-$name.log" || true)
    if ((n)); then
        log "daemon $name logged $n WARN/ERROR lines, first ones:"
        head -n 5 "$BENCH_OUT/problems-$name.log" >&2
    fi
done

trap - EXIT
cleanup
[[ $(manifest_root "$tree") == "$ref_root" ]] || die "the reference tree $tree changed during the run"

# --- 4. report --------------------------------------------------------------------------------
q_tree=$(printf %q "$tree")
python3 - <<EOF
import json, statistics
def L(p): return json.load(open(p))
ch = [json.loads(l) for l in open("$BENCH_OUT/changes.jsonl")]
bu = L("$BENCH_OUT/burst.json")
hist_b = {r["id"]: r for r in L("$BENCH_OUT/history_b.json")}
burst_ids = [l.strip() for l in open("$BENCH_OUT/burst_sync_ids") if l.strip()]
nfiles, nbytes = $ref_files, $ref_bytes
def ms3(xs):
    return f"median {statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"
def verdict(ok): return "met" if ok else "**not met**"
w = [c["watcher_s"] for c in ch]
r = [c["replicated_s"] for c in ch]
kinds = {k: [c for c in ch if c["kind"] == k] for k in ("modify", "add", "delete")}
extra_a = sum(len(c["a_roots_seen"]) - 2 for c in ch)
polls = statistics.median(c["polls"] for c in ch)
quiet = $quiet_s
cpu_a, cpu_b = $cpu_a, $cpu_b
fa, fb = $files_a, $files_b
rows = []
print("| figure | stagingd | target |")
print("|---|---|---|")
print(f"| single-file change → a's own manifest root changed (watcher), {len(ch)} changes | {ms3(w)} | ≤ 1 s — {verdict(max(w) <= 1.0)} (max) |")
print(f"| single-file change → b's root equals a's new root (watcher + replication), {len(ch)} changes | {ms3(r)} | within seconds (§6) |")
by = "; ".join(f"{k} {statistics.median(c['replicated_s'] for c in v) * 1000:.0f} ms" for k, v in kinds.items() if v)
print(f"| … b equal, median by kind | {by} | — |")
print(f"| syncs b recorded during the {len(ch)} changes | $syncs_changes | one per change |")
print(f"| quiet daemon a (serving), CPU over {quiet:.0f} s without changes | {cpu_a / quiet * 100:.2f}% of one core ({cpu_a:.2f} s) | — |")
print(f"| quiet daemon b (following a), CPU over {quiet:.0f} s without changes | {cpu_b / quiet * 100:.2f}% of one core ({cpu_b:.2f} s) | — |")
for name, rss, hwm, f in (("a", $rss_a, $hwm_a, fa), ("b", $rss_b, $hwm_b, fb)):
    print(f"| memory of {name} after step 1 ({f:,} files tracked) | VmRSS {rss / 1024:,.1f} MiB = {rss * 1024 / f:,.0f} bytes/file; VmHWM {hwm / 1024:,.1f} MiB = {hwm * 1024 / f:,.0f} bytes/file | ≤ 300 bytes/file — {verdict(rss * 1024 / f <= 300)} (VmRSS) |")
n = bu["files"]
print(f"| burst: {n:,} new files written into a new directory of a ({bu['written_s']:.2f} s to write) → a's manifest has them all | {bu['watcher_s']:.3f} s after the first write | — |")
print(f"| burst → b's root equals a's | {bu['replicated_s']:.3f} s after the first write | — |")
res = {}
for i in burst_ids:
    rr = hist_b.get(i, {}).get("result", "?").split(":")[0]
    res[rr] = res.get(rr, 0) + 1
creates = [ (hist_b.get(i, {}).get("counts") or {}).get("creates", 0) for i in burst_ids]
detail = ", ".join(f"{v} {k}" for k, v in sorted(res.items()))
print(f"| syncs b recorded for the burst | {len(burst_ids)} ({detail}); creates per sync: {', '.join(str(c) for c in reversed(creates))} | — |")
print(f"| CPU during the burst (first write → b equal) | a {$burst_cpu_a:.2f} s, b {$burst_cpu_b:.2f} s; VmHWM after: a {$hwm_a_end / 1024:,.1f} MiB, b {$hwm_b_end / 1024:,.1f} MiB | — |")
print()
print(f"- machine: \`nproc\` = $(nproc); date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $commit at build time (stagingd and stagingctl built by this script with \`cargo build --release -p stagingd -p stagingctl\`).")
print(f"- tree: \`gen_tree.py --files $files --seed $seed\` → {nfiles:,} files, {nbytes:,} bytes ({nbytes / 1e9:.2f} GB); root $ref_root. a serves a \`cp -al\` copy, b a \`cp -a\` copy of it (offline roots checked equal before starting, so b starts in sync: no initial copy); both daemons on one filesystem, over 127.0.0.1.")
print(f"- step 1: {len(ch)} changes in turn modify / add / delete one regular file of a (modify: old content + one line, written to \`.bench-tmp-NAME\` in the same directory then renamed over it, mode kept; add: a new \`bench-added-I.php\` the same way; delete: unlink). t0 = right after the rename or unlink. Then \`stagingctl --admin-socket SOCK_A status --json\` and the same on b, in turn, every ~20 ms (median {polls:.0f} polls per change): 'a's manifest' = first answer of a whose \`trees[0].root\` differs from the root before the change; 'b equal' = first answer of b whose root equals a's current (changed) root, then a's root stays put for 1 s. Times are when the answer arrived (upper bounds, within one poll). 0.5 s pause between changes. a published {extra_a} intermediate roots in all (a root other than before/after a change).")
print(f"- step 2: 5 s after step 1, no status calls for {quiet:.1f} s; CPU = Δ(utime + stime) of the daemon process (all threads) from \`/proc/PID/stat\`, CLK_TCK $clk_tck; memory from \`/proc/PID/status\` at its end; bytes per file = KiB × 1024 / \`trees[0].files\`. Threads: a $threads_a, b $threads_b.")
print(f"- step 3: {n:,} files of 100–4,000 bytes (open, one write, close; no rename) into \`bench-burst/\` at a's top level; t0 = before the \`mkdir\`. 'a has them all' = first answer of a with \`trees[0].files\` = files before + {n:,}; 'b equal' = b's root = a's root then, stable for 1 s. Syncs = ids in b's \`stagingctl history --json\` that were not there before the burst.")
print(f"- end: a's and b's daemon roots equal the offline \`stagingctl manifest DIR --json\` roots of both trees, and \`rsync -naci --delete --exclude=/.stagingd A/ B/\` lists nothing; the reference tree's root is unchanged.")
print("- commands:")
print("  - daemons: \`RUST_LOG=info stagingd --name a --root A --state-dir STATE_A --listen 127.0.0.1:PORT_A --admin-socket SOCK_A\`; \`stagingctl --admin-socket SOCK_A pool serve --bootstrap --reason bench\`; \`RUST_LOG=info stagingd --name b --root B --state-dir STATE_B --listen 127.0.0.1:PORT_B --admin-socket SOCK_B --peer a=http://127.0.0.1:PORT_A --replicate-from a\`; A = \`cp -al $q_tree A\`, B = \`cp -a A B\`")
print("  - polling: \`stagingctl --admin-socket SOCK_A status --json\`, \`stagingctl --admin-socket SOCK_B status --json\`; syncs: \`stagingctl --admin-socket SOCK_B history --json\`")
for name in ("a", "b"):
    p = open(f"$BENCH_OUT/problems-{name}.log").read().splitlines()
    if p:
        print(f"- daemon {name} logged {len(p)} WARN/ERROR lines (step 1 began $step1_utc, step 3 $step3_utc), first: " + "; ".join(f"\`{l[:300]}\`" for l in p[:3]))
EOF
