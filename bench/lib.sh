# shellcheck shell=bash
# Helpers shared by the bench/ scripts. Source it; it defines functions only.
#
# Conventions: progress and diagnostics go to stderr (log/die), so a script's stdout carries
# only its result (for BENCHMARKS.md). Timings are wall-clock seconds.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# bench_repo_root: the repository holding this bench/ directory.
bench_repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P); }

# ensure_tools "cmd:package[:optional]" ...
# Installs missing Debian packages when root (apt-get update once, then install only packages
# apt-cache reports a candidate for). Dies with a clear message for a missing required tool
# when not root; warns for a missing optional one. A cmd may be an absolute path.
ensure_tools() {
    local spec cmd pkg opt missing_req=() missing_opt=() to_install=()
    for spec in "$@"; do
        IFS=: read -r cmd pkg opt <<<"$spec"
        if [[ $cmd == /* ]]; then [[ -x $cmd ]] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
        if [[ $opt == optional ]]; then missing_opt+=("$cmd:$pkg"); else missing_req+=("$cmd:$pkg"); fi
    done
    ((${#missing_req[@]} + ${#missing_opt[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        ((${#missing_opt[@]})) && log "optional tool missing (not root, not installing): ${missing_opt[*]}"
        if ((${#missing_req[@]})); then
            local pkgs=() s
            for s in "${missing_req[@]}"; do pkgs+=("${s#*:}"); done
            die "missing required tool(s): ${missing_req[*]} — run as root, or install them first: sudo apt-get install -y ${pkgs[*]}"
        fi
        return 0
    fi
    log "apt-get update (for: ${missing_req[*]} ${missing_opt[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    local s candidate
    for s in "${missing_req[@]}" "${missing_opt[@]}"; do
        pkg=${s#*:}
        candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [[ -z $candidate || $candidate == "(none)" ]]; then
            log "apt-cache has no candidate for package '$pkg'"
            continue
        fi
        log "will install $pkg $candidate"
        to_install+=("$pkg")
    done
    if ((${#to_install[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${to_install[@]}" >&2 ||
            die "apt-get install ${to_install[*]} failed"
    fi
    for s in "${missing_req[@]}"; do
        cmd=${s%%:*}
        if [[ $cmd == /* ]]; then [[ -x $cmd ]]; else command -v "$cmd" >/dev/null 2>&1; fi ||
            die "required tool '$cmd' (package ${s#*:}) is still missing after apt-get install"
    done
}

# ensure_tree N SEED WORKDIR -> prints the tree's path. Generated once with gen_tree.py into
# WORKDIR/tree-nN-sSEED (via a .partial directory renamed on success, so an interrupted
# generation is never mistaken for a complete tree), then reused.
ensure_tree() {
    local n=$1 seed=$2 workdir=$3 gen
    local dir="$workdir/tree-n$n-s$seed"
    gen="$(bench_repo_root)/../shared/bench/gen_tree.py"
    if [[ -d $dir ]]; then
        log "reusing reference tree $dir"
    else
        [[ -f $gen ]] || die "tree generator not found: $gen"
        local need_kb=$((n * 16)) avail_kb
        avail_kb=$(df -Pk "$workdir" | awk 'NR == 2 {print $4}')
        ((avail_kb > need_kb)) || die "not enough space in $workdir for a $n-file tree (~$((need_kb / 1024)) MiB needed, $((avail_kb / 1024)) MiB free)"
        rm -rf "$dir.partial"
        log "generating reference tree: python3 $gen --files $n --seed $seed --out $dir (about a minute per 150k files)"
        python3 "$gen" --files "$n" --seed "$seed" --out "$dir.partial" --quiet >&2 || die "gen_tree.py failed"
        mv "$dir.partial" "$dir"
    fi
    printf '%s\n' "$dir"
}

# warn_watch_limit TREE DAEMONS: warns when DAEMONS daemons watching copies of TREE as this
# user would need more inotify watches (one per directory) than fs.inotify.max_user_watches
# allows: a daemon past the limit falls back to a rescan every 30 s, which a memory or
# latency figure would then include. (Production runs one daemon per host.)
warn_watch_limit() {
    local tree=$1 daemons=$2 dirs limit
    limit=$(cat /proc/sys/fs/inotify/max_user_watches 2>/dev/null) || return 0
    dirs=$(find "$tree" -type d | wc -l)
    if ((dirs * daemons > limit)); then
        log "WARNING: $daemons daemons watching $dirs directories each need $((dirs * daemons)) inotify watches;" \
            "fs.inotify.max_user_watches is $limit: set \`sysctl fs.inotify.max_user_watches=$((dirs * daemons * 2))\`" \
            "or the daemons poll instead (and their figures include those rescans)"
    fi
}

# stats_of FILE... -> "median min max" (seconds) of the numbers in the given files (one per line).
stats_of() {
    python3 - "$@" <<'EOF'
import statistics, sys
xs = [float(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
print(f"{statistics.median(xs):.6f} {min(xs):.6f} {max(xs):.6f}")
EOF
}

# measure NAME PREPARE COMMAND -> prints "median min max" seconds over $BENCH_RUNS timed runs of
# COMMAND (run with sh -c), each preceded by an untimed PREPARE. Uses hyperfine when present
# (raw export kept in $BENCH_OUT/NAME.hyperfine.json), else a date +%s.%N loop. Per-run times
# are written to $BENCH_OUT/NAME.times. Dies if any run fails.
measure() {
    local name=$1 prep=$2 cmd=$3 i t0 t1
    local times="$BENCH_OUT/$name.times"
    : >"$times"
    log "measuring $name: $cmd"
    if [[ ${BENCH_TIMER:-} == hyperfine ]]; then
        local hj="$BENCH_OUT/$name.hyperfine.json"
        hyperfine --runs "$BENCH_RUNS" --prepare "$prep" --export-json "$hj" --style basic \
            --command-name "$name" -- "$cmd" >&2 || die "hyperfine failed for $name"
        python3 - "$hj" >"$times" <<'EOF' || die "cannot parse $hj"
import json, sys
for t in json.load(open(sys.argv[1]))["results"][0]["times"]:
    print(t)
EOF
    else
        for ((i = 0; i < BENCH_RUNS; i++)); do
            sh -c "$prep" >/dev/null 2>&1 || die "prepare failed for $name: $prep"
            t0=$(date +%s.%N)
            sh -c "$cmd" >/dev/null || die "run failed for $name: $cmd"
            t1=$(date +%s.%N)
            awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }' >>"$times"
        done
    fi
    stats_of "$times"
}

# --- helpers added for bench/sync.sh ---

# free_port -> prints a TCP port that was free on 127.0.0.1 a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# warm_read_cmd DIR -> prints a shell command that reads every file of DIR (8 readers: cold reads
# need many in flight) and then stats every entry. Run it right before a timed run: the page
# cache drops data unused for ~30 s.
warm_read_cmd() {
    local q
    q=$(printf %q "$1")
    printf '%s\n' "find $q -type f -print0 | xargs -0 -P8 -n 500 cat > /dev/null && find $q -printf '%s %T@\\n' > /dev/null"
}

# stat_walk_cmd DIR -> prints a shell command that stats every entry of DIR (dentries and inodes
# only, no file data).
stat_walk_cmd() {
    local q
    q=$(printf %q "$1")
    printf '%s\n' "find $q -printf '%s %T@\\n' > /dev/null"
}

# time_cmd TIMES_FILE CMD [ARG...]: runs CMD (its stdout and stderr pass through), appends its
# wall-clock seconds to TIMES_FILE, and returns CMD's exit status.
time_cmd() {
    local times=$1 t0 t1 rc=0
    shift
    t0=$(date +%s.%N)
    "$@" || rc=$?
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }' >>"$times"
    return "$rc"
}

# commit_desc REPO -> prints the short commit, noting uncommitted changes.
commit_desc() {
    local repo=$1 c
    if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        c=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
        [[ -z $(git -C "$repo" status --porcelain 2>/dev/null) ]] || c+=" (work tree has uncommitted changes)"
    else
        c=unknown
    fi
    printf '%s\n' "$c"
}

# --- helpers added for bench/replication.sh ---

# proc_cpu_ticks PID -> utime + stime of PID (all its threads) in clock ticks (`getconf CLK_TCK`),
# from /proc/PID/stat (fields 14 and 15, counted after the parenthesised command name).
proc_cpu_ticks() {
    local stat rest
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$rest"
}

# proc_status_kib PID KEY -> the kB value of KEY (VmRSS, VmHWM, ...) in /proc/PID/status.
proc_status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# bench_out_dir WORKDIR NAME: (re)creates WORKDIR/NAME for this run's raw results, exports it
# as BENCH_OUT and prints it.
bench_out_dir() {
    BENCH_OUT=$1/$2
    rm -rf "$BENCH_OUT"
    mkdir -p "$BENCH_OUT"
    export BENCH_OUT
}

# build_daemon_binaries REPO: builds stagingd and stagingctl in release mode and sets
# $stagingd and $ctl to them (honouring CARGO_TARGET_DIR). With BENCH_BIN_DIR set, uses the
# binaries in that directory instead and builds nothing (to measure a build kept aside).
build_daemon_binaries() {
    local repo=$1 bin_dir
    if [[ -n ${BENCH_BIN_DIR:-} ]]; then
        stagingd=$BENCH_BIN_DIR/stagingd ctl=$BENCH_BIN_DIR/stagingctl
        [[ -x $stagingd && -x $ctl ]] || die "BENCH_BIN_DIR=$BENCH_BIN_DIR holds no stagingd and stagingctl"
        log "using prebuilt binaries in $BENCH_BIN_DIR (BENCH_BIN_DIR)"
        return
    fi
    log "building: cargo build --release -p stagingd -p stagingctl (in $repo)"
    (cd "$repo" && cargo build --release -p stagingd -p stagingctl >&2) || die "cargo build --release -p stagingd -p stagingctl failed"
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
    [[ $bin_dir == /* ]] || bin_dir=$repo/$bin_dir
    stagingd=$bin_dir/stagingd
    ctl=$bin_dir/stagingctl
    [[ -x $stagingd && -x $ctl ]] || die "binaries not found in $bin_dir"
}
