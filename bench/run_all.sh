#!/bin/bash
# usage: bench/run_all.sh [REPS]     (default 3)
# One measuring sitting, every figure of issue 9 in a row, against ONE version of the code:
# the tree is frozen first into bench/data/tree (bench/snapshot_tree.sh; others may keep
# editing the checkout), then anchors, single node, profiles, Raft writes, failover, join,
# cross-node. The sitting starts once the 1-min load average is <= $LOAD_MAX (1.0; waits at
# most 10 min); every result line records load1. Each script stops its servers itself. Output: bench/results/*.txt, bench/profiles/, and the log
# bench/data/sitting-DATE.log.
set -u
BENCH=$(cd "$(dirname "$0")" && pwd); REPS=${1:-3}
STEPS=${STEPS:-"anchors single_node profile raft_writes failover join cross_node"}
mkdir -p "$BENCH/data"; LOG=$BENCH/data/sitting-$(date -u +%Y%m%dT%H%M%SZ).log
"$BENCH/snapshot_tree.sh" "$BENCH/data/tree" >/dev/null || exit 2
export RAFTXMPP_TREE=$BENCH/data/tree
"$BENCH/build_xmppload.sh" || exit 2
{ echo "# sitting $(date -u +%FT%TZ) reps=$REPS"; cat "$RAFTXMPP_TREE/TREE_INFO"
  "${PYTHON:-python3}" "$BENCH/benchlib.py" machine; } | tee -a "$LOG"
echo "load average before the sitting: $("${PYTHON:-python3}" "$BENCH/benchlib.py" load-wait)" | tee -a "$LOG"
# Within the sitting our own load raises the average: the steps record it but do not wait.
export LOAD_MAX=${STEP_LOAD_MAX:-99}
status=0
for step in $STEPS; do
  echo "== $step $(date -u +%FT%TZ) load1=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$LOG"
  case $step in
    anchors) "$BENCH/anchors.sh" "$REPS";;
    single_node) "$BENCH/single_node.sh" "$REPS";;
    profile) "$BENCH/profile.sh";;
    raft_writes) "${PYTHON:-python3}" "$BENCH/raft_writes.py";;
    failover) "${PYTHON:-python3}" "$BENCH/failover.py";;
    join) "${PYTHON:-python3}" "$BENCH/join.py";;
    cross_node) "$BENCH/cross_node.sh" 1;;
    *) echo "unknown step $step"; false;;
  esac 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] || { status=1; echo "!! $step failed" | tee -a "$LOG"; }
done
echo "== done $(date -u +%FT%TZ)" | tee -a "$LOG"
# The pictures of RESULTS.md, redrawn with this sitting in them (matplotlib is optional).
if "${PYTHON:-python3}" -c "import matplotlib" 2>/dev/null; then
  "${PYTHON:-python3}" "$BENCH/plot.py" 2>&1 | tee -a "$LOG"
else
  echo "no pictures: bench/plot.py needs matplotlib (pip install -e '.[plots]')" | tee -a "$LOG"
fi
exit $status
