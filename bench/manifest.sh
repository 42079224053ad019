#!/usr/bin/env bash
# Manifest benchmark ([M1], DESIGN.md §5): cold manifest build vs b3sum over the same files with
# the same cores, warm rescan (restart with an unchanged tree) vs a bare `find -printf` stat
# walk, and peak RSS per file. Prints a Markdown table on stdout for BENCHMARKS.md; progress goes
# to stderr. Writes only under the work directory (reference tree, stat cache, raw timings in
# WORKDIR/last/).
#
# usage: bench/manifest.sh [--files N] [--runs R] [--workdir DIR] [--stagingctl PATH] [--no-hyperfine]
#   --files N         files in the generated reference tree (default 150000; gen_tree.py --seed 1)
#   --runs R          timed runs per figure; medians are reported (default 5)
#   --workdir DIR     where the tree (reused, keyed by N), the cache file and raw results live
#                     (default ${TMPDIR:-/tmp}/stagingd-bench)
#   --stagingctl PATH use this binary instead of building `cargo build --release -p stagingctl`
#   --no-hyperfine    time with a date +%s.%N loop even if hyperfine is installed
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

files=150000 runs=5 workdir=${TMPDIR:-/tmp}/stagingd-bench stagingctl="" use_hyperfine=1
seed=1
while (($#)); do
    case $1 in
        --files) files=${2:?--files needs a value}; shift 2 ;;
        --runs) runs=${2:?--runs needs a value}; shift 2 ;;
        --workdir) workdir=${2:?--workdir needs a value}; shift 2 ;;
        --stagingctl) stagingctl=${2:?--stagingctl needs a value}; shift 2 ;;
        --no-hyperfine) use_hyperfine=0; shift ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ $files =~ ^[1-9][0-9]*$ ]] || die "--files must be a positive integer, got '$files'"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$runs'"

# 1. tools
ensure_tools python3:python3 b3sum:b3sum /usr/bin/time:time hyperfine:hyperfine:optional
if ((use_hyperfine)) && command -v hyperfine >/dev/null 2>&1; then
    BENCH_TIMER=hyperfine
    timer_desc="hyperfine $(hyperfine --version | awk '{print $2}') (--runs $runs, --prepare = warm-up)"
else
    BENCH_TIMER=loop
    timer_desc="bash loop with date +%s.%N ($runs runs, warm-up before each)"
fi
BENCH_RUNS=$runs
export BENCH_TIMER BENCH_RUNS

mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd -P)
BENCH_OUT=$workdir/last
rm -rf "$BENCH_OUT"
mkdir -p "$BENCH_OUT"
export BENCH_OUT

# 2. build
binary_desc="given with --stagingctl"
if [[ -z $stagingctl ]]; then
    binary_desc="built by this script with cargo build --release -p stagingctl"
    command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build stagingctl)"
    log "building: cargo build --release -p stagingctl (in $repo)"
    (cd "$repo" && cargo build --release -p stagingctl >&2) || die "cargo build --release -p stagingctl failed"
    stagingctl=${CARGO_TARGET_DIR:-$repo/target}/release/stagingctl
    [[ $stagingctl == /* ]] || stagingctl=$repo/$stagingctl
fi
[[ -x $stagingctl && -f $stagingctl ]] || die "stagingctl binary not found or not executable: $stagingctl"
stagingctl=$(cd "$(dirname "$stagingctl")" && pwd -P)/$(basename "$stagingctl")

# 3. reference tree (generated once per N, then reused)
tree=$(ensure_tree "$files" "$seed" "$workdir")
cache=$workdir/manifest-n$files-s$seed.cache

# 4. measure
ncpu=$(nproc)
q_tree=$(printf %q "$tree")
q_cache=$(printf %q "$cache")
q_ctl=$(printf %q "$stagingctl")

# Warm-up right before every timed run: the page cache drops data unused for ~30 s. Read every
# file with 8 readers (cold reads need many in flight; `tar -f /dev/null` would skip the reads),
# then stat every entry (dentries and inodes, symlinks and directories included).
warm="find $q_tree -type f -print0 | xargs -0 -P8 -n 500 cat > /dev/null && find $q_tree -printf '%s %T@\\n' > /dev/null"

cmd_cold="$q_ctl manifest $q_tree --json > /dev/null"
cmd_warm="$q_ctl manifest $q_tree --json --cache $q_cache > /dev/null"
cmd_find="find $q_tree -printf '%s %T@\\n' > /dev/null"
b3_names=(b3sum_default b3sum_1thread b3sum_nommap)
b3_flags=("--no-names" "--no-names --num-threads 1" "--no-names --no-mmap")
b3_descs=("default (mmap for large files, multi-threaded per file)" "--num-threads 1 (one thread per process)" "--no-mmap (buffered reads, one thread per process)")

# An untimed cold run first: checks the binary and its JSON, and gives the tree's counts.
log "untimed cold run: $cmd_cold"
rm -f "$cache"
sh -c "$warm" || die "warm-up failed: $warm"
"$stagingctl" manifest "$tree" --json >"$BENCH_OUT/cold.json" || die "stagingctl manifest failed"
python3 - "$BENCH_OUT/cold.json" <<'EOF' || die "stagingctl manifest --json output does not match the contract (see $BENCH_OUT/cold.json)"
import json, sys
j = json.load(open(sys.argv[1]))
need = ["root", "files", "dirs", "symlinks", "bytes", "scan_seconds", "files_hashed", "files_reused", "complete"]
missing = [k for k in need if k not in j]
if missing:
    sys.exit(f"missing keys: {missing}")
if j["complete"] is not True:
    sys.exit("manifest not complete")
EOF

declare -A med lo hi
record() { # record NAME PREPARE COMMAND
    local r m l h
    r=$(measure "$1" "$2" "$3") || exit 1
    read -r m l h <<<"$r"
    med[$1]=$m lo[$1]=$l hi[$1]=$h
}

for i in "${!b3_names[@]}"; do
    record "${b3_names[$i]}" "$warm" "find $q_tree -type f -print0 | xargs -0 -P$ncpu -n 2000 b3sum ${b3_flags[$i]} > /dev/null"
done
record cold "rm -f $q_cache && $warm" "$cmd_cold"
record find "$warm" "$cmd_find"

log "untimed run creating the cache: $cmd_warm"
rm -f "$cache"
sh -c "$cmd_warm" || die "stagingctl manifest --cache failed"
[[ -f $cache ]] || die "stagingctl manifest --cache did not create $cache"
record warm "$warm" "$cmd_warm"
sh -c "$warm"
"$stagingctl" manifest "$tree" --json --cache "$cache" >"$BENCH_OUT/warm.json" || die "warm rescan failed"

# Peak RSS (KiB) with GNU time, median over the same number of runs.
rss() { # rss NAME ARGS...
    local name=$1 i
    shift
    log "peak RSS ($name): /usr/bin/time -f %M $stagingctl $*"
    for ((i = 0; i < runs; i++)); do
        [[ $name == cold ]] && rm -f "$cache"
        sh -c "$warm"
        /usr/bin/time -f %M -o "$BENCH_OUT/rss_$name.$i" "$stagingctl" "$@" >/dev/null || die "stagingctl failed under /usr/bin/time"
    done
    stats_of "$BENCH_OUT"/rss_"$name".*
}
r=$(rss cold manifest "$tree" --json) || exit 1
read -r rss_cold _ _ <<<"$r"
sh -c "$cmd_warm" # recreate the cache the cold RSS runs deleted
r=$(rss warm manifest "$tree" --json --cache "$cache") || exit 1
read -r rss_warm _ _ <<<"$r"

# 5. report
b3_best=0
for i in "${!b3_names[@]}"; do
    if awk -v a="${med[${b3_names[$i]}]}" -v b="${med[${b3_names[$b3_best]}]}" 'BEGIN { exit !(a < b) }'; then b3_best=$i; fi
done
b3_lines=""
for i in "${!b3_names[@]}"; do
    n=${b3_names[$i]}
    b3_lines+="${b3_descs[$i]}|${med[$n]}|${lo[$n]}|${hi[$n]}|$([[ $i == "$b3_best" ]] && echo 1 || echo 0)"$'\n'
done
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -z $(git -C "$repo" status --porcelain 2>/dev/null) ]] || commit+=" (work tree has uncommitted changes)"
else
    commit=unknown
fi
best=${b3_names[$b3_best]}
cmd_b3="find $q_tree -type f -print0 | xargs -0 -P$ncpu -n 2000 b3sum ${b3_flags[$b3_best]} > /dev/null"

python3 - "$BENCH_OUT/cold.json" "$BENCH_OUT/warm.json" <<EOF
import json, sys
cold_j = json.load(open(sys.argv[1]))
warm_j = json.load(open(sys.argv[2]))
nfiles, nbytes = cold_j["files"], cold_j["bytes"]
cold, cold_lo, cold_hi = ${med[cold]}, ${lo[cold]}, ${hi[cold]}
warm, warm_lo, warm_hi = ${med[warm]}, ${lo[warm]}, ${hi[warm]}
find, find_lo, find_hi = ${med[find]}, ${lo[find]}, ${hi[find]}
b3, b3_lo, b3_hi = ${med[$best]}, ${lo[$best]}, ${hi[$best]}
rss_cold_kib, rss_warm_kib = ${rss_cold}, ${rss_warm}
b3_variants = [l.split("|") for l in """${b3_lines}""".strip().splitlines()]

def t(m, l, h):
    return f"{m:.3f} s ({l:.3f}–{h:.3f})"
def mbps(s):
    return f"{nbytes / s / 1e6:,.0f} MB/s"
def verdict(ok):
    return "met" if ok else "**not met**"

cold_ratio = b3 / cold
warm_ratio = warm / find
bpf_cold = rss_cold_kib * 1024 / nfiles
bpf_warm = rss_warm_kib * 1024 / nfiles

print("| figure | stagingd | reference | ratio | target |")
print("|---|---|---|---|---|")
print(f"| cold manifest build (no cache) | {t(cold, cold_lo, cold_hi)}, {mbps(cold)} | \`b3sum ${b3_flags[$b3_best]}\`, {$ncpu} processes: {t(b3, b3_lo, b3_hi)}, {mbps(b3)} "
      f"| {cold_ratio:.2f} (b3sum time / stagingd time) | ≥ 0.80 — {verdict(cold_ratio >= 0.80)} |")
print(f"| restart, unchanged tree (rescan with cache) | {t(warm, warm_lo, warm_hi)} | \`find -printf\` stat walk: {t(find, find_lo, find_hi)} "
      f"| {warm_ratio:.2f}× (stagingd / find) | ≤ 1.5× — {verdict(warm_ratio <= 1.5)} |")
print(f"| peak RSS, cold build | {rss_cold_kib / 1024:,.1f} MiB | {nfiles:,} files | {bpf_cold:,.0f} bytes/file | ≤ 300 bytes/file — {verdict(bpf_cold <= 300)} |")
print(f"| peak RSS, rescan with cache | {rss_warm_kib / 1024:,.1f} MiB | {nfiles:,} files | {bpf_warm:,.0f} bytes/file | ≤ 300 bytes/file — {verdict(bpf_warm <= 300)} |")
print()
print(f"- machine: \`nproc\` = {$ncpu}; date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $commit (stagingctl $binary_desc); timer: $timer_desc; times are medians (min–max) of wall-clock seconds over ${runs} runs, hot page cache (warm-up right before each run).")
print(f"- tree: \`gen_tree.py --files ${files} --seed ${seed}\` → {nfiles:,} files, {cold_j['dirs']:,} dirs, {cold_j['symlinks']:,} symlinks, {nbytes:,} bytes ({nbytes / 1e9:.2f} GB); root {cold_j['root']}.")
print(f"- stagingd's own scan_seconds: cold {cold_j['scan_seconds']:.3f} s ({cold_j['files_hashed']:,} files hashed, {cold_j['files_reused']:,} reused); "
      f"rescan with cache {warm_j['scan_seconds']:.3f} s ({warm_j['files_hashed']:,} hashed, {warm_j['files_reused']:,} reused"
      + ("; no file re-read" if warm_j["files_hashed"] == 0 else "; **files were re-read**")
      + (f"; cache: {warm_j['cache']}" if "cache" in warm_j else "") + ").")
print("- b3sum variants (the fastest is the reference): " + "; ".join(
      f"{d}: {float(m):.3f} s ({float(l):.3f}–{float(h):.3f})" + (" ← fastest" if best == "1" else "") for d, m, l, h, best in b3_variants) + ".")
print("- RSS: \`/usr/bin/time -f %M\` (KiB, median of ${runs} runs) divided by the manifest's file count.")
print("- commands:")
print("  - warm-up before each run: \`" + r"""$warm""" + "\`")
print("  - reference, cold: \`" + r"""$cmd_b3""" + "\`")
print("  - stagingd, cold: \`" + r"""$cmd_cold""" + "\`")
print("  - reference, restart: \`" + r"""$cmd_find""" + "\`")
print("  - stagingd, restart (after one untimed run that wrote the cache): \`" + r"""$cmd_warm""" + "\`")
EOF
