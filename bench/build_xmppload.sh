#!/bin/bash
# usage: bench/build_xmppload.sh
# Builds the load generator from ../shared/bench/xmppload.c (next to this checkout):
#   bench/xmppload        the shared generator, unchanged (what the anchors were measured with)
#   bench/xmppload-x      the same plus bench/xmppload-extras.patch: -Q PORT (receivers of the
#                         messages scenario connect to another node: cross-node) and -O (skip a
#                         session IQ the server marks <optional/>) and -M (stream management,
#                         XEP-0198, in the messages scenario: enable, answer the server's <r/>)
# Both binaries are gitignored. XMPPLOAD_DIR=DIR builds them into DIR instead (the smoke test).
# Exits non-zero if the source or gcc is missing.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
SRC=${XMPPLOAD_SRC:-$D/../../shared/bench/xmppload.c}
[ -f "$SRC" ] || SRC=$D/../shared/bench/xmppload.c
[ -f "$SRC" ] || { echo "build_xmppload: no xmppload.c (looked next to the checkout: ../shared/bench/)" >&2; exit 2; }
command -v gcc >/dev/null || { echo "build_xmppload: gcc not found" >&2; exit 2; }
OUT=${XMPPLOAD_DIR:-$D}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
gcc -O2 -o "$OUT/xmppload" "$SRC"
patch -s -o "$TMP/xmppload-x.c" "$SRC" "$D/xmppload-extras.patch"
gcc -O2 -o "$OUT/xmppload-x" "$TMP/xmppload-x.c"
echo "built $OUT/xmppload and $OUT/xmppload-x from $SRC"
