#!/bin/bash
# usage: bench/profile_cross.sh [PAIRS WINDOW]   (default 50 10)
# py-spy on both nodes of a cross-node message run (bench/cluster-3, fresh data; senders on
# node1, receivers on node2: bench/xmppload-x -Q, as bench/cross_node.sh measures it):
#   bench/profiles/cross_pP_wW_node{1,2}.md   top functions by self time (bench/pyspy_top.py)
#   bench/profiles/cross_pP_wW_node{1,2}.raw  collapsed stacks (gitignored)
# Needs py-spy (pip install py-spy) and ptrace rights. All three nodes are stopped on exit.
set -u
source "$(dirname "$0")/lib.sh"
P=${1:-50}; WIN=${2:-10}; C=$BENCH/cluster-3; PROF=$BENCH/profiles; TAG=cross_p${P}_w${WIN}
command -v py-spy >/dev/null || { echo "py-spy not found: pip install py-spy" >&2; exit 2; }
ensure_xmppload || exit 2
rm -rf "$BENCH/data/cluster-3"; mkdir -p "$BENCH/data/cluster-3" "$PROF"
for i in 1 2 3; do node_start "$C/node$i.toml" "$BENCH/data/cluster-3/node$i.log"; done
nodes_wait_ready "$C/node1.toml" "$C/node2.toml" "$C/node3.toml" || { echo "cluster did not come up" >&2; exit 1; }
"$BENCH/xmppload" -s register -p 5532 -n $((2 * P)) -c 50 -t 600 | grep '^RESULT' || exit 1
sleep 2
"$BENCH/xmppload-x" -p 5532 -Q 5542 -s messages -P "$P" -W "$WIN" -T 30 -U 1 -c 100 -t 120 \
  -S "${NODE_PIDS[0]},${NODE_PIDS[1]}" > "$PROF/$TAG.result" &
GEN=$!
sleep 6
timeout 60 py-spy record --pid "${NODE_PIDS[0]}" -d 15 -r 100 --format raw -o "$PROF/${TAG}_node1.raw" >/dev/null 2>&1 &
timeout 60 py-spy record --pid "${NODE_PIDS[1]}" -d 15 -r 100 --format raw -o "$PROF/${TAG}_node2.raw" >/dev/null 2>&1
wait "$GEN"
for n in 1 2; do
  { echo "## $TAG node$n ($([ $n = 1 ] && echo senders || echo receivers); load1 $(load1), $(date -u +%FT%TZ))"; echo
    grep RESULT "$PROF/$TAG.result"; echo
    "$PY" "$BENCH/pyspy_top.py" "$PROF/${TAG}_node$n.raw" 20; } > "$PROF/${TAG}_node$n.md"
  cat "$PROF/${TAG}_node$n.md"
done
