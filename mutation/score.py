"""Mutation score per module from `mutmut results --all true` (run in mutmut's work dir).

Score = killed / (killed + survived + no tests); a timeout counts as killed (the mutant
made the tests hang, which they notice), and mutants mutmut did not check are left out.
Prints a table and the survivors, one per line, for mutation/RESULTS.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict


def main(work: str) -> None:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=work, capture_output=True, text=True, check=True).stdout
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        match = re.match(r"^(.*?)\.x[_ǁ]", name)
        module = match.group(1) if match else name.split("__")[0]
        by_module[module][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name}: {status}")
    total = Counter()
    print(f"{'module':<36} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        print(_row(module, counts))
    print(_row("all", total))
    print("\nsurvivors:")
    print("\n".join(sorted(survivors)) or "none")


def _row(module: str, c: Counter) -> str:
    killed = c["killed"] + c["timeout"]
    judged = killed + c["survived"] + c["no tests"]
    score = f"{100 * killed / judged:.1f}%" if judged else "-"
    return (f"{module:<36} {sum(c.values()):>8} {killed:>7} {c['survived']:>9} "
            f"{c['no tests']:>9} {score:>7}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
