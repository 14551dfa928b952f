"""`python -m chaos run --nodes 3 --minutes 10 --seed N [--faults a,b] [--artifacts DIR]`.

Exit status: 0 every check passed; 1 a check failed (artifacts kept); 2 bad
arguments; 3 the machine cannot build the test network (needs root, `ip netns`,
nftables).
"""

from __future__ import annotations

import argparse
import sys

from chaos.faults import FAULTS, OPT_IN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos",
                                     description="raftxmpp fault-injection suite")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a seeded chaos test against real node processes")
    run.add_argument("--nodes", type=int, default=3, help="cluster size (1–9)")
    run.add_argument("--minutes", type=float, default=10.0,
                     help="how long to inject faults (the final checks come after)")
    run.add_argument("--seed", type=int, default=None, help="seed; random (and printed) if omitted")
    run.add_argument("--faults", default="", help=f"comma-separated subset of: {','.join((*FAULTS, *OPT_IN))} "
                          "(default: all but the opt-in ones)")
    run.add_argument("--artifacts", default=None, help="directory for history, logs, data dirs")
    run.add_argument("--keep", action="store_true", help="keep data dirs even when the run passes")
    run.add_argument("--election-min", type=float, default=0.3)
    run.add_argument("--election-max", type=float, default=0.6)
    run.add_argument("--heartbeat", type=float, default=0.05)
    sub.add_parser("faults", help="list the fault kinds")
    args = parser.parse_args(argv)
    if args.command == "faults":
        print("\n".join(FAULTS))
        print("\n".join(f"{f} (opt-in)" for f in OPT_IN))
        return 0
    from chaos.runner import main_run

    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
