#!/bin/bash
# Quick re-measure of the small-change and no-op sync with the watcher on (no source
# restart, no pre-sync rescan): A = cp -al of the reference tree, B = cp -a of it, three
# rounds of `mutate_tree.py --modify 100 --add 50 --delete 50`, each timed as one
# `stagingctl sync --from a` on B once A's manifest shows the mutation. Prints wall times.
# The full comparison against rsync and the copy floor is bench/sync.sh.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release -p stagingd -p stagingctl --manifest-path "$repo/Cargo.toml"
B=$repo/target/release
T=${TMPDIR:-/tmp}/stagingd-bench/tree-n150000-s1
[ -d "$T" ] || python3 "$repo/../shared/bench/gen_tree.py" --files 150000 --seed 1 --out "$T" >/dev/null
rm -rf /tmp/sc; mkdir -p /tmp/sc/a/state /tmp/sc/b/state
cp -al $T /tmp/sc/a/tree; cp -a $T /tmp/sc/b/tree
RUST_LOG=info $B/stagingd --name a --root /tmp/sc/a/tree --state-dir /tmp/sc/a/state --listen 127.0.0.1:7621 --admin-socket /tmp/sc/a.sock > /tmp/sc/a.log 2>&1 &
RUST_LOG="info,sync=debug" $B/stagingd --name b --root /tmp/sc/b/tree --state-dir /tmp/sc/b/state --listen 127.0.0.1:7622 --admin-socket /tmp/sc/b.sock --peer a=http://127.0.0.1:7621 > /tmp/sc/b.log 2>&1 &
for i in $(seq 1 300); do
  $B/stagingctl --admin-socket /tmp/sc/a.sock status --json 2>/dev/null | grep -q '"state": "watching"' && $B/stagingctl --admin-socket /tmp/sc/b.sock status --json 2>/dev/null | grep -q '"state": "watching"' && break; sleep 0.2; done
$B/stagingctl --admin-socket /tmp/sc/a.sock pool serve --bootstrap >/dev/null
sleep 2
for run in 1 2 3; do
  python3 "$repo/../shared/bench/mutate_tree.py" --modify 100 --add 50 --delete 50 --seed $((2000+run)) /tmp/sc/a/tree >/dev/null
  exp=$($B/stagingctl manifest /tmp/sc/a/tree --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["root"])')
  for i in $(seq 1 400); do $B/stagingctl --admin-socket /tmp/sc/a.sock status --json | grep -q "\"root\": \"$exp\"" && break; sleep 0.05; done
  sleep 1
  /usr/bin/time -f "small-change sync %e s" $B/stagingctl --admin-socket /tmp/sc/b.sock sync --from a 2>&1 | tail -1
done
for run in 1 2 3; do /usr/bin/time -f "no-op sync %e s" $B/stagingctl --admin-socket /tmp/sc/b.sock sync --from a 2>&1 | tail -1; done
for run in 1 2 3; do /usr/bin/time -f "status %e s" $B/stagingctl --admin-socket /tmp/sc/b.sock status --json >/dev/null; done 2>&1 | tail -3
pkill -f "stagingd --name a --root /tmp/sc"; pkill -f "stagingd --name b --root /tmp/sc"; sleep 0.5; rm -rf /tmp/sc
