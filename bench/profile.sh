#!/bin/bash
# usage: bench/profile.sh [SCENARIO...]   (default: msg_p50_w10 msg_p500_w1 login2000)
#   more scenarios: msg_sm_p50_w10 (xmppload-x -M: stream management, archive on as configured),
#   login_tls (bench/tls_login.py: SCRAM-SHA-256 over direct TLS, 100 at once, repeated)
# Profiles a fresh single node (bench/node.toml) with py-spy while xmppload drives it:
#   bench/profiles/SCENARIO.svg   flame graph (py-spy record, 15 s)
#   bench/profiles/SCENARIO.raw   collapsed stacks of a second 15 s window (gitignored)
#   bench/profiles/SCENARIO.md    top 20 functions by self time (bench/pyspy_top.py)
# Needs py-spy (pip install py-spy) and ptrace rights (root here). Stops the node on exit.
set -u
source "$(dirname "$0")/lib.sh"
CONF=${PROFILE_CONF:-$BENCH/node.toml}; PORT=5522; LOG=$BENCH/data/single.log; PROF=$BENCH/profiles
mkdir -p "$PROF" "$BENCH/data"
command -v py-spy >/dev/null || { echo "py-spy not found: pip install py-spy" >&2; exit 2; }
ensure_xmppload || exit 2
SCENARIOS=${*:-"msg_p50_w10 msg_p500_w1 login2000"}
echo "load average before the sitting: $(load_wait)"
rm -rf "$BENCH/data/single"
node_start "$CONF" "$LOG"; nodes_wait_ready "$CONF" || exit 1
"$BENCH/xmppload" -s register -p $PORT -n 2000 -c 50 -t 600 | grep '^RESULT' || exit 1
pick_generator $PORT || exit 1
case " $SCENARIOS " in *" login_tls "*) "$PY" "$BENCH/tls_login.py" prime --port 5523 -n 2000 || exit 1;; esac
PID=${NODE_PIDS[0]}
GEN=""
trap '[ -n "$GEN" ] && { pkill -P $GEN 2>/dev/null; kill $GEN 2>/dev/null; }; nodes_stop_all' EXIT
for sc in $SCENARIOS; do
  case $sc in
    msg_p50_w10) args="-s messages -P 50 -W 10 -T 36 -U 1 -t 120";;
    msg_p500_w1) args="-s messages -P 500 -W 1 -T 36 -U 1 -t 120";;
    msg_sm_p50_w10) args="-s messages -P 50 -W 10 -T 36 -U 1 -t 120";;
    login2000|login_tls) args="";;   # back-to-back login runs of 2000 accounts, 100 at once, see below
    *) echo "unknown scenario $sc" >&2; exit 2;;
  esac
  if [ "$sc" = login2000 ]; then
    # 2000 accounts, logins repeated for 35 s: ten generator runs of 2000 back to back
    ( for i in $(seq 10); do $XL -p $PORT -s login -n 2000 -c 100 -t 60 >/dev/null; done ) &
  elif [ "$sc" = login_tls ]; then
    ( for i in $(seq 10); do "$PY" "$BENCH/tls_login.py" login --port 5523 -n 2000 -c 100 --pid $PID; done > "$PROF/$sc.result" ) &
  elif [ "$sc" = msg_sm_p50_w10 ]; then
    "$BENCH/xmppload-x" -M -p $PORT $args -S $PID > "$PROF/$sc.result" &
  else
    $XL -p $PORT $args -S $PID > "$PROF/$sc.result" &
  fi
  GEN=$!
  sleep 4
  timeout 60 py-spy record --pid $PID -d 15 -r 100 -o "$PROF/$sc.svg" >/dev/null 2>&1 || echo "py-spy svg failed" >&2
  timeout 60 py-spy record --pid $PID -d 15 -r 100 --format raw -o "$PROF/$sc.raw" >/dev/null 2>&1 || echo "py-spy raw failed" >&2
  timeout 60 py-spy dump --pid $PID > "$PROF/$sc.dump.txt" 2>&1
  if [ "$sc" = login2000 ] || [ "$sc" = login_tls ]; then pkill -P $GEN 2>/dev/null; kill $GEN 2>/dev/null; fi
  wait $GEN 2>/dev/null; GEN=""
  { echo "## $sc (load1 $(load1), $(date -u +%FT%TZ))"; echo; cat "$PROF/$sc.result" 2>/dev/null | grep RESULT; echo
    "$PY" "$BENCH/pyspy_top.py" "$PROF/$sc.raw" 20; } > "$PROF/$sc.md"
  cat "$PROF/$sc.md"
  sleep 3
done
