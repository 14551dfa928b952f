#!/bin/bash
# usage: bench/cross_node.sh [REPS]     (default 1)
# Three nodes on this machine (bench/cluster-3/node{1,2,3}.toml, fresh data in
# bench/data/cluster-3): xmppload messages with sender and receiver on the same node
# (all clients on node1) and on different nodes (senders on node1, receivers on node2:
# bench/xmppload-x -Q), at 50 pairs x window 10 and 500 pairs x window 1.
# Prints RESULT lines (+ load1 and ratio=cross/same) and appends them to
# bench/results/cross_node.txt. All three nodes are stopped on exit, failure or Ctrl-C.
set -u
source "$(dirname "$0")/lib.sh"
REPS=${1:-1}; C=$BENCH/cluster-3; OUT=${RESULTS_FILE:-$BENCH/results/cross_node.txt}
mkdir -p "$BENCH/results" "$BENCH/data"
ensure_xmppload || exit 2
echo "load average before the sitting: $(load_wait)"
STAMP=$(date -u +%FT%TZ)
rm -rf "$BENCH/data/cluster-3"; mkdir -p "$BENCH/data/cluster-3"
for i in 1 2 3; do node_start "$C/node$i.toml" "$BENCH/data/cluster-3/node$i.log"; done
nodes_wait_ready "$C/node1.toml" "$C/node2.toml" "$C/node3.toml" || { echo "cluster did not come up" >&2; exit 1; }
P1=5532; P2=5542
"$BENCH/xmppload" -s register -p $P1 -n 1000 -c 50 -t 600 | grep '^RESULT' || exit 1
sleep 2   # accounts replicate to node2 (commit + apply there)
pick_generator $P1 || exit 1
XLX="$BENCH/xmppload-x"; [ -n "$XL_NOTE" ] && XLX="$XLX -O"
PIDS=$(IFS=,; echo "${NODE_PIDS[*]}")
status=0
value() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
for rep in $(seq "$REPS"); do
  for shape in "50 10" "500 1"; do
    set -- $shape; args="-s messages -P $1 -W $2 -T 20 -U 2 -c 100 -t 120 -S $PIDS"; tag=p$1_w$2
    l1=$(load1); same=$(timeout 300 $XLX -p $P1 $args | grep '^RESULT') || status=1
    echo "server=raftxmpp-3 rep=$rep tag=same_node_$tag ${same:-RESULT failed=all} date=$STAMP load1=$l1 $XL_NOTE" | tee -a "$OUT"
    sleep 3
    l1=$(load1); cross=$(timeout 300 $XLX -p $P1 -Q $P2 $args | grep '^RESULT') || status=1
    s=$(echo "$same" | value msgs_per_s); x=$(echo "$cross" | value msgs_per_s)
    ratio=$(awk -v s="${s:-0}" -v x="${x:-0}" 'BEGIN { printf "%.2f", (s > 0 ? x / s : 0) }')
    echo "server=raftxmpp-3 rep=$rep tag=cross_node_$tag ${cross:-RESULT failed=all} date=$STAMP load1=$l1 ratio=$ratio $XL_NOTE" | tee -a "$OUT"
    sleep 3
  done
done
exit $status
