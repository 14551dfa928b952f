# Sourced by the bench/*.sh scripts: start/stop raftxmpp nodes, always clean up.
# Every node started with node_start is stopped by the EXIT trap that lib.sh installs.
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
PY=${PYTHON:-python3}
# RAFTXMPP_TREE=DIR: run the server code from a frozen copy made by bench/snapshot_tree.sh DIR
[ -n "${RAFTXMPP_TREE:-}" ] && export PYTHONPATH=$RAFTXMPP_TREE
NODE_PIDS=()

node_start() { # CONFIG LOG: start one node in the background, append its pid to NODE_PIDS
  # From the tree's directory: `python -m` puts the working directory first on sys.path,
  # before PYTHONPATH, so started from a checkout it would run the checkout's code.
  (cd "${RAFTXMPP_TREE:-$REPO}" && exec "$PY" -m raftxmpp_cli.main node start --config "$1") >>"$2" 2>&1 &
  NODE_PIDS+=($!)
}
node_stop() { # PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
nodes_stop_all() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do node_stop "$pid"; done
  NODE_PIDS=()
}
nodes_wait_ready() { # CONFIG...: until every node reports a leader and readiness (60 s max)
  "$PY" "$BENCH/benchlib.py" wait-ready "$@"
}
load_wait() { # prints the 1-min load average after waiting (<= 10 min) for it to drop to <= 1.0
  "$PY" "$BENCH/benchlib.py" load-wait "${LOAD_MAX:-1.0}"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
ensure_xmppload() {
  [ -x "$BENCH/xmppload" ] && [ -x "$BENCH/xmppload-x" ] || "$BENCH/build_xmppload.sh"
}
# The generator to use against raftxmpp: the shared xmppload if a one-client login works, else
# xmppload-x -O (skips the <optional/> session IQ) and a note on every RESULT line. Sets XL, XL_NOTE.
pick_generator() { # PORT
  XL="$BENCH/xmppload"; XL_NOTE=""
  if ! "$BENCH/xmppload" -s login -n 1 -c 1 -p "$1" -t 10 >/dev/null 2>&1; then
    if "$BENCH/xmppload-x" -O -s login -n 1 -c 1 -p "$1" -t 10 >/dev/null 2>&1; then
      XL="$BENCH/xmppload-x -O"; XL_NOTE="session=skipped"
      echo "NOTE: the session IQ after bind fails on this server; logging in without it (-O)" >&2
    else
      echo "ERROR: a single login fails even without the session IQ" >&2; return 1
    fi
  fi
}
trap 'nodes_stop_all' EXIT
trap 'exit 130' INT TERM
ulimit -n 20000 2>/dev/null || ulimit -n 4096
