#!/bin/bash
# usage: bench/sm.sh [REPS]     (default 3)
# What stream management (XEP-0198) costs on the 50 × 10 message rate: the messages scenario
# of bench/single_node.sh (msg_p50_w10), with the same generator binary (xmppload-x) once
# without and once with -M (every client enables SM with resume; receivers answer the
# server's <r/>, which it sends every [stream_management] ack_every = 5 stanzas), on a fresh
# node before each test, alternating, REPS times. Then the memory of detached sessions
# (bench/sm_memory.py). RESULT lines go to stdout and bench/results/sm.txt.
set -u
source "$(dirname "$0")/lib.sh"
REPS=${1:-3}; CONF=$BENCH/node.toml; PORT=5522; LOG=$BENCH/data/single.log
OUT=${RESULTS_FILE:-$BENCH/results/sm.txt}
mkdir -p "$BENCH/results" "$BENCH/data"
ensure_xmppload || exit 2
echo "load average before the sitting: $(load_wait)"
STAMP=$(date -u +%FT%TZ)
echo "# raftxmpp stream management $STAMP reps=$REPS load1=$(load1) tree=${RAFTXMPP_TREE:-checkout} (bench/sm.sh)" >> "$OUT"

fresh_node() {
  nodes_stop_all; sleep 1
  node_start "$CONF" "$LOG"
  nodes_wait_ready "$CONF" || { echo "node did not come up; see $LOG" >&2; exit 1; }
  sleep 2
}

rm -rf "$BENCH/data/single"
fresh_node
"$BENCH/xmppload" -s register -p $PORT -n 2000 -b 1 -c 50 -t 600 | grep '^RESULT' || exit 1
XL="$BENCH/xmppload-x -O"
MSG="-s messages -P 50 -W 10 -T 20 -U 2 -c 100 -t 120"
status=0
for rep in $(seq "$REPS"); do
  for mode in plain sm; do
    fresh_node
    flag=""; [ "$mode" = sm ] && flag="-M"
    l1=$(load1)
    line=$(timeout 300 $XL $flag -p $PORT $MSG -S "${NODE_PIDS[0]}" | grep '^RESULT') || status=1
    echo "server=raftxmpp rep=$rep tag=msg_p50_w10_${mode} ${line:-RESULT failed=all} date=$STAMP load1=$l1" | tee -a "$OUT"
  done
done
for rep in $(seq "$REPS"); do
  fresh_node
  line=$("$PY" "$BENCH/sm_memory.py" --port $PORT --pid "${NODE_PIDS[0]}" --metrics 5580 -n 2000) || status=1
  echo "server=raftxmpp rep=$rep tag=sm_detached2000 ${line:-RESULT failed=all} date=$STAMP load1=$(load1)" | tee -a "$OUT"
done
exit $status
