#!/bin/bash
# usage: bench/sitting22_full.sh [REPS]     (default 3)
# Every figure of issue 22 in one sitting against ONE frozen version of the code
# (bench/snapshot_tree.sh into bench/data/tree22; the checkout may change meanwhile):
#   bench/sitting22.sh REPS        single server: raftxmpp, ejabberd, Prosody alternated
#   bench/cross_node.sh REPS       cross-node / same-node message rate, 50 x 10 and 500 x 1
#   bench/raft_writes.py, REPS x   durable writes/s vs raw pysyncobj (3 nodes, fsync on)
#   bench/failover_msgs.py         p99 message latency while the leader is killed
# then the table: python3 bench/report.py --issue22. Log: bench/data/sitting22-DATE.log.
# Run it on a quiet machine: nothing else should run meanwhile (every line records load1).
set -u
BENCH=$(cd "$(dirname "$0")" && pwd); REPS=${1:-3}; PY=${PYTHON:-python3}
mkdir -p "$BENCH/data"; LOG=$BENCH/data/sitting22-$(date -u +%Y%m%dT%H%M%SZ).log
"$BENCH/snapshot_tree.sh" "$BENCH/data/tree22" >/dev/null || exit 2
export RAFTXMPP_TREE=$BENCH/data/tree22
{ echo "# sitting22_full $(date -u +%FT%TZ) reps=$REPS"; cat "$RAFTXMPP_TREE/TREE_INFO"
  "$PY" "$BENCH/benchlib.py" machine; } | tee -a "$LOG"
status=0
step() { # NAME COMMAND...
  echo "== $1 $(date -u +%FT%TZ) load1=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$LOG"; shift
  "$@" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] || { status=1; echo "!! step failed" | tee -a "$LOG"; }
}
step single "$BENCH/sitting22.sh" "$REPS"
step cross_node "$BENCH/cross_node.sh" "$REPS"
for i in $(seq "$REPS"); do step "raft_writes $i" "$PY" "$BENCH/raft_writes.py"; done
step failover_msgs "$PY" "$BENCH/failover_msgs.py" --trials "$REPS"
echo "== done $(date -u +%FT%TZ)" | tee -a "$LOG"
"$PY" "$BENCH/report.py" --issue22 | tee -a "$LOG"
exit $status
