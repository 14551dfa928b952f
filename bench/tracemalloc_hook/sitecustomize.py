"""Loaded only by bench/conn_cost.py --tracemalloc (PYTHONPATH): tracemalloc on from the
start (keeping $RAFTXMPP_TRACEMALLOC_FRAMES frames, default 1), and SIGUSR2 dumps a
snapshot to $RAFTXMPP_TRACEMALLOC_DIR/tracemalloc.snap."""

import os
import signal
import tracemalloc
from pathlib import Path

_DIR = os.environ.get("RAFTXMPP_TRACEMALLOC_DIR")
if _DIR:
    tracemalloc.start(int(os.environ.get("RAFTXMPP_TRACEMALLOC_FRAMES") or 1))

    def _dump(signum, frame) -> None:
        path = Path(_DIR) / "tracemalloc.snap"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".done").touch()

    signal.signal(signal.SIGUSR2, _dump)
