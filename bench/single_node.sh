#!/bin/bash
# usage: bench/single_node.sh [REPS]     (default 3; REPS=1 for a quick look)
# Single-node figures of issue 9 with ../shared/bench's xmppload, the way the anchors were
# measured (fresh.sh): a fresh server process before every test, REPS repetitions:
#   login500, login2000 (100 at once), msg_p50_w10, msg_p500_w1, idle2000 (KiB per connection).
# Starts from an empty data dir (bench/data/single), registers user1..user2000 in-band, prints
# RESULT lines in bench_suite.sh's format (+ load1=) and appends them to
# bench/results/raftxmpp.txt; ../shared/bench/summarize.py bench/results/*.txt reads them.
# Every node it starts is stopped on exit, failure or Ctrl-C.
set -u
source "$(dirname "$0")/lib.sh"
REPS=${1:-3}; CONF=$BENCH/node.toml; PORT=5522; LOG=$BENCH/data/single.log
OUT=${RESULTS_FILE:-$BENCH/results/raftxmpp.txt}
mkdir -p "$BENCH/results" "$BENCH/data"
ensure_xmppload || exit 2
echo "load average before the sitting: $(load_wait)"
STAMP=$(date -u +%FT%TZ)
echo "# raftxmpp single node $STAMP reps=$REPS load1=$(load1) tree=${RAFTXMPP_TREE:-checkout} (bench/single_node.sh)" >> "$OUT"

fresh_node() {
  nodes_stop_all; sleep 1
  node_start "$CONF" "$LOG"
  nodes_wait_ready "$CONF" || { echo "node did not come up; see $LOG" >&2; exit 1; }
  sleep 2
}

rm -rf "$BENCH/data/single"
fresh_node
"$BENCH/xmppload" -s register -p $PORT -n 2000 -b 1 -c 50 -t 600 | grep '^RESULT' || exit 1
pick_generator $PORT || exit 1

declare -A ARGS=(
  [login500]="-s login -n 500 -c 100 -t 120"
  [login2000]="-s login -n 2000 -c 100 -t 180"
  [msg_p50_w10]="-s messages -P 50 -W 10 -T 20 -U 2 -c 100 -t 120"
  [msg_p500_w1]="-s messages -P 500 -W 1 -T 20 -U 2 -c 100 -t 120"
  [idle2000]="-s idle -n 2000 -c 100 -h 5 -t 180")
TAGS=${TAGS:-"login500 login2000 msg_p50_w10 msg_p500_w1 idle2000"}
status=0
for rep in $(seq "$REPS"); do
  for tag in $TAGS; do
    fresh_node
    l1=$(load1)
    line=$(timeout 300 $XL -p $PORT ${ARGS[$tag]} -S "${NODE_PIDS[0]}" | grep '^RESULT') || status=1
    echo "server=raftxmpp rep=$rep tag=${tag}_fresh ${line:-RESULT failed=all} date=$STAMP load1=$l1 $XL_NOTE" | tee -a "$OUT"
  done
done
exit $status
