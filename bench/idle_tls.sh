#!/bin/bash
# usage: bench/idle_tls.sh [REPS] [N]      (default 3 repetitions of 2000 connections)
# Issue 22's idle figure alone, raftxmpp only: KiB of server RSS per idle TLS connection
# (bench/tls_login.py idle: direct TLS, SASL, bind, roster, initial <presence/>, 100 at once),
# a fresh node before every repetition, started from an accounts-only data dir made once.
# MECH=PLAIN (default; the mechanism does not change the figure, sitting22_idle_mech.txt)
# or SCRAM-SHA-256 (needs `tls_login.py prime`); HOLD=s before the RSS is read (default 5,
# as sitting22.sh); C=clients logging in at once (default 100). RESULT lines + commit + load1 go to
# bench/results/idle_tls.txt. Every node started here is stopped on exit.
set -u
source "$(dirname "$0")/lib.sh"
REPS=${1:-3}; N=${2:-2000}; CONF=${CONF:-$BENCH/node.toml}; LOG=$BENCH/data/idle_tls.log
MECH=${MECH:-PLAIN}; OUT=${RESULTS_FILE:-$BENCH/results/idle_tls.txt}
ensure_xmppload || exit 2
mkdir -p "$BENCH/data" "$BENCH/results"
COMMIT=$(git -C "${RAFTXMPP_TREE:-$REPO}" rev-parse --short HEAD 2>/dev/null)
DIRTY=$(git -C "${RAFTXMPP_TREE:-$REPO}" status --porcelain -- raftxmpp 2>/dev/null | grep -q . && echo +dirty)
ACC=$BENCH/data/single-accounts$N
if [ ! -d "$ACC" ]; then
  rm -rf "$BENCH/data/single"
  node_start "$CONF" "$LOG"; nodes_wait_ready "$CONF" || exit 1
  "$BENCH/xmppload" -s register -p 5522 -n "$N" -b 1 -c 50 -t 600 | grep '^RESULT'
  nodes_stop_all; cp -r "$BENCH/data/single" "$ACC"
fi
echo "# idle_tls $(date -u +%FT%TZ) reps=$REPS n=$N c=${C:-100} mech=$MECH hold=${HOLD:-5} commit=$COMMIT$DIRTY uptime: $(uptime)" | tee -a "$OUT"
for rep in $(seq "$REPS"); do
  rm -rf "$BENCH/data/single"; cp -r "$ACC" "$BENCH/data/single"
  node_start "$CONF" "$LOG"; nodes_wait_ready "$CONF" || exit 1; sleep 2
  l1=$(load1)
  line=$(timeout 300 "$PY" "$BENCH/tls_login.py" idle --port 5523 -n "$N" -c "${C:-100}" --mech "$MECH" \
         --pid "${NODE_PIDS[0]}" --hold "${HOLD:-5}" | grep '^RESULT')
  echo "rep=$rep commit=$COMMIT$DIRTY load1=$l1 $line" | tee -a "$OUT"
  nodes_stop_all
done
