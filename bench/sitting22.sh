#!/bin/bash
# usage: bench/sitting22.sh [REPS]     (default 3)
# The single-server figures of issue 22 in ONE sitting, raftxmpp, ejabberd 23.01 and Prosody
# 0.12.3 alternated test by test (the order rotates each repetition) so that every server
# sees the same load from the rest of the machine; a fresh server process before every test.
#   msg_sm_p50_w10   xmppload-x -M, 50 pairs x window 10, stream management (every client
#                    enables it, receivers answer <r/>) and the archive on: raftxmpp's default
#                    [archive] (always), ejabberd mod_mam default: always, Prosody mod_mam
#                    default_archive_policy = true
#   msg_p500_w1      the shared xmppload, 500 pairs x window 1 (archives on as above)
#   login_tls        bench/tls_login.py: 2000 accounts, 100 at once, direct TLS, SCRAM-SHA-256
#   idle_tls         bench/tls_login.py idle: KiB of server RSS per idle TLS connection after
#                    login (SCRAM-SHA-256) and a roster fetch, 2000 connections
#   msg_p50_w10_noarch / msg_p500_w1_noarch  raftxmpp only, [archive] off: the previous
#                    sittings' configuration, for the regression check; with ANCHOR_MAM=0 the
#                    anchors run them too, without mod_mam (the shared configs' features)
# Prosody runs the two message tests only (0.12 offers no SCRAM-SHA-256; no TLS in its config).
# The anchors run from bench/data/anchors22, a copy of ../shared/bench with the configs
# derived here (ejabberd: + a direct-TLS listener on 5223, SCRAM-SHA-256 keys, mod_mam;
# Prosody: + mod_mam). RESULT lines + load1 + uptime go to bench/results/sitting22.txt.
# Every server started here is stopped on exit.
set -u
source "$(dirname "$0")/lib.sh"
REPS=${1:-3}; CONF=$BENCH/node.toml; LOG=$BENCH/data/single.log
SH=${SHARED_BENCH:-$BENCH/../../shared/bench}   # ../shared next to the checkout (or a worktree's)
[ -f "$SH/fresh.sh" ] || SH=$BENCH/../../../shared/bench
[ -f "$SH/fresh.sh" ] || { echo "no ../shared/bench next to the checkout (set SHARED_BENCH)" >&2; exit 2; }
W=$BENCH/data/anchors22
OUT=${RESULTS_FILE:-$BENCH/results/sitting22.txt}
TAGS=${TAGS:-"msg_sm_p50_w10 msg_p500_w1 login_tls idle_tls msg_p50_w10_noarch msg_p500_w1_noarch"}
SERVERS=${SERVERS:-"raftxmpp ejabberd prosody"}
mkdir -p "$BENCH/results" "$BENCH/data"
ensure_xmppload || exit 2
STAMP=$(date -u +%FT%TZ)

# -- anchors' workspace and configs --
rm -rf "$W"; mkdir -p "$W"; cp -r "$SH/." "$W/"; rm -rf "$W/results"; mkdir -p "$W/results"
cp "$BENCH/xmppload" "$W/xmppload"
"$PY" - "$W/configs/ejabberd.yml" "$W/configs/prosody.cfg.lua" <<'EOF'
import os
import sys
ej, pr = sys.argv[1], sys.argv[2]
t = open(ej).read()
tls = """  -
    port: 5223
    ip: "127.0.0.1"
    module: ejabberd_c2s
    tls: true
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
    max_fsm_queue: 1000000
    backlog: 1024
"""
# the TLS listener goes after the plain one (end of the listen: list)
t = t.replace("    backlog: 1024\ndisable_sasl_mechanisms:", "    backlog: 1024\n" + tls + "disable_sasl_mechanisms:", 1)
assert "port: 5223" in t
t = t.replace("auth_password_format: scram", "auth_password_format: scram\nauth_scram_hash: sha256", 1)
mam = os.environ.get("ANCHOR_MAM", "1") == "1"
if mam:
    t = t.replace("  mod_mqtt: {}\n", "  mod_mam:\n    default: always\n  mod_mqtt: {}\n", 1)
assert ("mod_mam:\n    default: always" in t) == mam and "auth_scram_hash" in t
open(ej, "w").write("# bench/sitting22.sh: + direct TLS on 5223, SCRAM-SHA-256 keys, mod_mam (mnesia)\n" + t)
p = open(pr).read()
if mam:
    p = p.replace('"version";', '"version"; "mam";', 1)
    assert '"mam"' in p
    p += '\ndefault_archive_policy = true\narchive_expires_after = "never"\n'
open(pr, "w").write("-- bench/sitting22.sh: + mod_mam (internal storage), every message archived\n" + p)
EOF
[ $? = 0 ] || exit 2
chmod -R a+rX "$W"
ulimit -n 20000
RAFT_ON=$CONF
RAFT_OFF=$BENCH/data/node-noarchive.toml
{ cat "$CONF"; printf '\n[archive]\nenabled = false\n'; } > "$RAFT_OFF"
sed -i 's|^data_dir = "data/single"|data_dir = "single"|' "$RAFT_OFF"   # relative to bench/data
grep -q '^data_dir = "single"' "$RAFT_OFF" || exit 2

stop_anchors() { # only what runs: an ejabberdctl stop of a stopped node costs seconds
  pgrep -u ejabberd -f 'beam.smp' >/dev/null && (cd "$W" && timeout 90 ./ejabberd.sh stop >/dev/null 2>&1)
  pgrep -u prosody >/dev/null && (cd "$W" && timeout 90 ./prosody.sh stop >/dev/null 2>&1)
  return 0
}
trap 'nodes_stop_all; stop_anchors' EXIT
for s in ejabberd prosody; do   # a package's own daemon would hold the port
  pgrep -u "$s" >/dev/null 2>&1 && { /etc/init.d/$s stop >/dev/null 2>&1; (cd "$W" && timeout 60 ./$s.sh stop >/dev/null 2>&1); }
done

fresh() { # SERVER [CONFIG]: stops everything, starts SERVER; sets SPID
  nodes_stop_all; stop_anchors; sleep 2
  case $1 in
    raftxmpp) node_start "${2:-$RAFT_ON}" "$LOG"
              nodes_wait_ready "${2:-$RAFT_ON}" || { echo "node did not come up; see $LOG" >&2; return 1; }
              sleep 2; SPID=${NODE_PIDS[0]};;
    ejabberd) (cd "$W" && ./ejabberd.sh start >/dev/null 2>&1) || return 1; sleep 4; SPID=$(cd "$W" && ./ejabberd.sh pid);;
    prosody) (cd "$W" && ./prosody.sh start >/dev/null 2>&1) || return 1; sleep 4; SPID=$(cd "$W" && ./prosody.sh pid);;
  esac
}
port() { case $1 in raftxmpp) echo 5522;; ejabberd) echo 5222;; prosody) echo 5322;; esac; }
tls_port() { case $1 in raftxmpp) echo 5523;; ejabberd) echo 5223;; esac; }

echo "# sitting22 $STAMP reps=$REPS tree=${RAFTXMPP_TREE:-checkout} uptime: $(uptime)" | tee -a "$OUT"
# -- accounts: user1..user2000 / pw on every server; SCRAM salts primed for the generator --
if [ -z "${SKIP_SETUP:-}" ]; then   # SKIP_SETUP=1: the accounts of an earlier run are reused
rm -rf "$BENCH/data/single"
for s in $SERVERS; do
  fresh "$s" || { echo "$s did not start" >&2; exit 1; }
  "$BENCH/xmppload" -s register -p "$(port "$s")" -n 2000 -b 1 -c 50 -t 600 | grep '^RESULT' | sed "s/^/$s /"
  tp=$(tls_port "$s")
  [ -n "$tp" ] && "$PY" "$BENCH/tls_login.py" prime --port "$tp" -n 2000 | sed "s/^/$s /"
done
nodes_stop_all; rm -rf "$BENCH/data/single-accounts"; cp -r "$BENCH/data/single" "$BENCH/data/single-accounts"
fi

run_test() { # SERVER TAG REP
  local s=$1 tag=$2 rep=$3 p line l1 cfg=$RAFT_ON
  # *_noarch: raftxmpp with [archive] off; the anchors too when ANCHOR_MAM=0 (no mod_mam)
  case $tag in *_noarch) [ "$s" = raftxmpp ] || [ "${ANCHOR_MAM:-1}" = 0 ] || return 0; cfg=$RAFT_OFF;; esac
  case $tag in login_tls|idle_tls) [ "$s" = prosody ] && return 0;; esac
  # raftxmpp starts from the accounts-only data dir every time (no archive or log of earlier tests)
  # (the previous server stops first: a raftxmpp node still running would write into the new copy)
  if [ "$s" = raftxmpp ]; then nodes_stop_all; rm -rf "$BENCH/data/single"; cp -r "$BENCH/data/single-accounts" "$BENCH/data/single"; fi
  fresh "$s" "$cfg" || { echo "server=$s rep=$rep tag=$tag RESULT failed=start" | tee -a "$OUT"; return 1; }
  p=$(port "$s"); l1=$(load1)
  case $tag in
    msg_sm_p50_w10) line=$(timeout 300 "$BENCH/xmppload-x" -M -p "$p" -s messages -P 50 -W 10 -T 20 -U 2 -c 100 -t 120 -S "$SPID" | grep '^RESULT');;
    msg_p500_w1|msg_p500_w1_noarch) line=$(timeout 300 "$BENCH/xmppload" -p "$p" -s messages -P 500 -W 1 -T 20 -U 2 -c 100 -t 120 -S "$SPID" | grep '^RESULT');;
    msg_p50_w10_noarch) line=$(timeout 300 "$BENCH/xmppload" -p "$p" -s messages -P 50 -W 10 -T 20 -U 2 -c 100 -t 120 -S "$SPID" | grep '^RESULT');;
    login_tls) line=$(timeout 300 "$PY" "$BENCH/tls_login.py" login --port "$(tls_port "$s")" -n 2000 -c 100 --pid "$SPID" | grep '^RESULT');;
    idle_tls) line=$(timeout 300 "$PY" "$BENCH/tls_login.py" idle --port "$(tls_port "$s")" -n 2000 -c 100 --pid "$SPID" --hold 5 | grep '^RESULT');;
  esac
  echo "server=$s rep=$rep tag=$tag ${line:-RESULT failed=all} date=$STAMP load1=$l1 load_after=$(load1) at=$(date -u +%TZ)" | tee -a "$OUT"
}

set -- $SERVERS; ORDER=("$@")
for rep in $(seq "$REPS"); do
  for tag in $TAGS; do
    n=${#ORDER[@]}
    for i in $(seq 0 $((n - 1))); do run_test "${ORDER[$(( (i + rep - 1) % n ))]}" "$tag" "$rep"; done
  done
done
nodes_stop_all; stop_anchors
echo "# sitting22 done $(date -u +%FT%TZ) uptime: $(uptime)" | tee -a "$OUT"
