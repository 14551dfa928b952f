#!/bin/bash
# usage: bench/snapshot_tree.sh DIR
# Copies this checkout's server code as it is now (tracked + untracked, not ignored; read-only
# git commands only) into DIR, so a measuring sitting runs one fixed version of the code while
# others keep editing the tree. Then run any bench script with RAFTXMPP_TREE=DIR.
# DIR/TREE_INFO records the commit, the uncommitted changes and a hash of them.
set -euo pipefail
mkdir -p "$1"; DIR=$(cd "$1" && pwd); REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$DIR"; mkdir -p "$DIR"
cd "$REPO"
git ls-files -co --exclude-standard -- raftxmpp cli tests pyproject.toml | while read -r f; do
  [ -f "$f" ] && { mkdir -p "$DIR/$(dirname "$f")"; cp -p "$f" "$DIR/$f"; }
done
ln -s cli "$DIR/raftxmpp_cli"
{ echo "commit $(git rev-parse --short HEAD)"
  echo "snapshot $(date -u +%FT%TZ)"
  echo "uncommitted diff sha256 $( (git diff HEAD -- raftxmpp cli tests; git ls-files -o --exclude-standard -- raftxmpp cli tests | sort | xargs -r cat) | sha256sum | cut -c1-16)"
  git status --short -- raftxmpp cli tests | sed 's/^/  /'
} > "$DIR/TREE_INFO"
cat "$DIR/TREE_INFO" | head -3
