#!/bin/bash
# usage: bench/anchors.sh [REPS]     (default 3)
# The anchors of issue 9, measured in the same sitting as raftxmpp: Debian's ejabberd and
# Prosody with ../shared/bench's configs and scripts, every test on a freshly started server
# (../shared/bench/fresh.sh), REPS repetitions of login500 login2000 msg_p50_w10 msg_p500_w1
# idle2000. Installs the packages if missing (apt-get). ../shared is read-only, so the shared
# scripts and configs run from a copy in bench/data/anchors with bench/xmppload; their RESULT
# lines are appended to bench/results/ejabberd.txt and prosody.txt, with a '# ...' line
# giving the date and load average. Both servers are stopped on exit, failure or Ctrl-C.
set -u
BENCH=$(cd "$(dirname "$0")" && pwd)
SH=${SHARED_BENCH:-$BENCH/../../shared/bench}
W=$BENCH/data/anchors; REPS=${1:-3}
SERVERS=${SERVERS:-"ejabberd prosody"}
TAGS=${TAGS:-"login500 login2000 msg_p50_w10 msg_p500_w1 idle2000"}
[ -f "$SH/fresh.sh" ] || { echo "no ../shared/bench next to the checkout" >&2; exit 2; }
if ! command -v ejabberdctl >/dev/null || ! command -v prosody >/dev/null; then
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ejabberd prosody || exit 2
fi
[ -x "$BENCH/xmppload" ] || "$BENCH/build_xmppload.sh" || exit 2
rm -rf "$W"; mkdir -p "$W"; cp -r "$SH/." "$W/"; rm -rf "$W/results"; mkdir -p "$W/results"
cp "$BENCH/xmppload" "$W/xmppload"
chmod -R a+rX "$W"   # the servers run as their package users and read the configs here
cd "$W"
stop_servers() { for s in $SERVERS; do timeout 90 ./$s.sh stop >/dev/null 2>&1; done; return 0; }
trap stop_servers EXIT
trap 'exit 130' INT TERM
ulimit -n 20000
for s in $SERVERS; do   # a package's own daemon (started by its postinst) would hold the port
  pgrep -u "$s" >/dev/null 2>&1 && { /etc/init.d/$s stop >/dev/null 2>&1; timeout 60 ./$s.sh stop >/dev/null 2>&1; }
done
echo "load average before the sitting: $("${PYTHON:-python3}" "$BENCH/benchlib.py" load-wait)"
status=0
for s in $SERVERS; do
  port=$([ "$s" = ejabberd ] && echo 5222 || echo 5322)
  if ss -ltn | grep -q "127.0.0.1:$port "; then
    echo "port $port is busy (another server?): skipping $s" >&2; status=1; continue
  fi
  ./$s.sh start >/dev/null 2>&1 || { echo "$s did not start" >&2; status=1; continue; }
  sleep 4
  ./create_accounts.sh "$s" $port 2000 | grep '^RESULT'
  ./$s.sh stop >/dev/null 2>&1
  echo "# $s $(date -u +%FT%TZ) load1=$(cut -d' ' -f1 /proc/loadavg) reps=$REPS (bench/anchors.sh)" >> "$BENCH/results/$s.txt"
  ./fresh.sh "$s" "$REPS" $TAGS || status=1
  cat "results/$s.txt" >> "$BENCH/results/$s.txt"
  echo "# $s done $(date -u +%FT%TZ) load1=$(cut -d' ' -f1 /proc/loadavg)" >> "$BENCH/results/$s.txt"
done
exit $status
