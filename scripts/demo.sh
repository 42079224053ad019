#!/usr/bin/env bash
# The README's "run" command: builds stagingctl, makes a sample staging tree and
# prints its manifest, then shows that a copy agrees and a one-byte change does not.
# Uses ../shared/bench/gen_tree.py when it is there (a realistic tree shape);
# otherwise a small tree is written with the shell.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/stagingd-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --quiet --release -p stagingctl --manifest-path "$repo/Cargo.toml"
ctl="$repo/target/release/stagingctl"

tree="$work/mediawiki-staging"
gen="$repo/../shared/bench/gen_tree.py"
if command -v python3 >/dev/null 2>&1 && [ -f "$gen" ]; then
    echo "== generating a 20,000-file sample tree with gen_tree.py"
    python3 "$gen" --files 20000 --seed 1 --out "$tree" >/dev/null
else
    echo "== writing a small sample tree"
    mkdir -p "$tree/php-1.44.0-wmf.1/includes" "$tree/wmf-config" "$tree/dblists"
    for i in $(seq 1 500); do printf '<?php // file %s\n' "$i" >"$tree/php-1.44.0-wmf.1/includes/F$i.php"; done
    printf '<?php $wgSitename = "demo";\n' >"$tree/wmf-config/CommonSettings.php"
    printf 'enwiki\ndewiki\n' >"$tree/dblists/all.dblist"
    ln -s php-1.44.0-wmf.1 "$tree/w"
fi

echo
echo "== stagingctl manifest $tree"
"$ctl" manifest "$tree" --cache "$work/stat.cache"
echo
echo "== again, with the stat cache (unchanged files are not read; files changed"
echo "   within 2 s of being hashed are read once more, as git does for racy entries)"
"$ctl" manifest "$tree" --cache "$work/stat.cache" | tail -n 1
echo
echo "== a cp -a copy has the same root"
cp -a "$tree" "$work/copy"
"$ctl" manifest "$work/copy" | sed -n 2p
echo
echo "== after a one-byte change in the copy"
f=$(find "$work/copy" -type f -name '*.php' -print -quit)
printf 'x' >>"$f"
"$ctl" manifest "$work/copy" | sed -n 2p
