#!/usr/bin/env bash
# The README's "run" command: a two-master demo on loopback.
#
# Builds stagingd and stagingctl, generates a sample staging tree, starts two
# daemons with temp dirs (deploy1002 holds the tree, deploy2002 is a freshly
# provisioned, empty master), and walks through what operators do:
#   status on both -> pool the first master -> diff and sync the new one ->
#   a bad change on the source trips the delete guard -> confirm -> rollback.
# Everything is removed at the end. Uses ../shared/bench/gen_tree.py when it is
# there (a realistic tree shape); otherwise a small tree is written with the shell.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/stagingd-demo.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || printf '(exit %s)\n' "$?"; }

say "building (release)"
cargo build --quiet --release -p stagingd -p stagingctl --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release"

tree_a="$work/deploy1002/srv/mediawiki-staging"
tree_b="$work/deploy2002/srv/mediawiki-staging"
mkdir -p "$(dirname "$tree_a")" "$tree_b"
gen="$repo/../shared/bench/gen_tree.py"
if command -v python3 >/dev/null 2>&1 && [ -f "$gen" ]; then
    say "generating a 5,000-file sample tree with gen_tree.py"
    python3 "$gen" --files 5000 --seed 1 --out "$tree_a" >/dev/null
else
    say "writing a small sample tree"
    mkdir -p "$tree_a/php-1.44.0-wmf.1/includes" "$tree_a/wmf-config" "$tree_a/dblists"
    for i in $(seq 1 500); do printf '<?php // file %s\n' "$i" >"$tree_a/php-1.44.0-wmf.1/includes/F$i.php"; done
    printf '<?php $wgSitename = "demo";\n' >"$tree_a/wmf-config/CommonSettings.php"
    printf 'enwiki\ndewiki\n' >"$tree_a/dblists/all.dblist"
    ln -s php-1.44.0-wmf.1 "$tree_a/w"
fi

# start NAME TREE LISTEN [EXTRA FLAGS...]: starts a daemon (LISTEN 127.0.0.1:0
# picks a free port) and waits until its tree is scanned.
start() {
    local name=$1 tree=$2 listen=$3
    shift 3
    mkdir -p "$work/$name/state"
    RUST_LOG=warn "$bin/stagingd" --name "$name" --root "$tree" --state-dir "$work/$name/state" \
        --listen "$listen" --admin-socket "$work/$name/admin.sock" "$@" \
        >>"$work/$name/stagingd.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 300); do
        if "$bin/stagingctl" --admin-socket "$work/$name/admin.sock" status --json 2>/dev/null |
            grep -q '"readiness": "ready"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "stagingd $name did not become ready; its log:" >&2
    cat "$work/$name/stagingd.log" >&2
    exit 1
}
ctl_a() { "$bin/stagingctl" --admin-socket "$work/deploy1002/admin.sock" "$@"; }
ctl_b() { "$bin/stagingctl" --admin-socket "$work/deploy2002/admin.sock" "$@"; }

say "starting deploy1002 (holds the tree) and deploy2002 (freshly provisioned, empty)"
start deploy1002 "$tree_a" 127.0.0.1:0
addr_a=$(ctl_a status --json | sed -n 's/.*"listen_address": "\(.*\)".*/\1/p' | head -n 1)
start deploy2002 "$tree_b" 127.0.0.1:0 --peer "deploy1002=http://$addr_a"
echo "deploy1002 listens on $addr_a"

say "status of both: new nodes are receive-only"
run ctl_a status
run ctl_b status

say "a reimaged master is never a source: pooling the empty one is refused"
run ctl_b pool serve --reason "reimaged"

say "pool the first master (bootstrap: no other serving master exists yet)"
run ctl_a pool serve --bootstrap --reason "first master of the demo cluster"

say "what a sync would do (diff), then the sync"
ctl_b diff --from deploy1002 | tail -n 6
run ctl_b sync --from deploy1002 --reason "provision deploy2002"
run ctl_b status --check

say "a bad change on the source: 30% of its PHP files deleted"
root_a() { ctl_a status --json | sed -n 's/.*"root": "\([0-9a-f]*\)".*/\1/p' | head -n 1; }
before=$(root_a)
find "$tree_a" -name '*.php' | awk 'NR % 3 == 0' | xargs rm -f
# deploy1002's watcher notices within a second; wait until its root has moved.
for _ in $(seq 1 100); do [ "$(root_a)" != "$before" ] && break; sleep 0.1; done
run ctl_b sync --from deploy1002 --reason "routine sync"
plan=$( (ctl_b sync --from deploy1002 --json 2>/dev/null || true) | sed -n 's/.*"plan_id": "\([0-9a-f]*\)".*/\1/p' | head -n 1)

say "the operator reviewed the plan and confirms exactly it"
run ctl_b sync --from deploy1002 --confirm "$plan" --reason "intended cleanup"
run ctl_b history

say "it was not intended after all: roll back"
run ctl_b rollback --reason "undo the cleanup"
run ctl_b verify
run ctl_b status
