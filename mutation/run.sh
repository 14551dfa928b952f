#!/usr/bin/env bash
# Mutation testing of raftxmpp's sans-IO core (state machine, roster states, SASL, framer,
# component balancing, stanza/stream errors) with mutmut, against their fast tests.
# The modules and tests are in pyproject.toml, [tool.mutmut]; results in mutation/RESULTS.md.
#
#   mutation/run.sh                                   # every module (~CPU-heavy, niced)
#   mutation/run.sh 'raftxmpp.cluster.roster_states*' # a subset, by mutant name pattern
#
# It works on a copy of the tracked files (mutmut writes mutants/ beside the sources), in
# $MUTATION_DIR (default /tmp/raftxmpp-mutation), and prints the survivors at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${MUTATION_DIR:-/tmp/raftxmpp-mutation}
python=${PYTHON:-python}
"$python" -c "import mutmut" 2>/dev/null || "$python" -m pip install -q "mutmut==3.8.1"
commit=$(git -C "$root" rev-parse --short HEAD)  # the files copied are this commit's
rm -rf "$work"
mkdir -p "$work"
(cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$work")
cd "$work"
nice -n 10 "$python" -m mutmut run "$@" || true  # survivors are a result, not an error
"$python" -m mutmut results > results.txt || true
echo "commit $commit, $(date -u +%Y-%m-%d)"
"$python" "$root/mutation/score.py" "$work"
