#!/usr/bin/env python3
"""pyspy_top.py RAW [N]: top-N functions by self time from `py-spy record --format raw`.

RAW is py-spy's collapsed-stack output: one line per distinct stack, `frame;frame;...;leaf COUNT`,
each frame `function (path:line)`. Self = samples with the function as the leaf frame; total =
samples with it anywhere on the stack (counted once per sample). Prints a markdown table.
"""
import collections
import re
import sys

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def key(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["path"]
    for marker in ("site-packages/", "/raftxmpp/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "/raftxmpp/" else "raftxmpp/" + path.split(marker, 1)[1]
            break
    return f"{path}:{m['fn']}"


def main() -> None:
    raw, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
    self_c, total_c = collections.Counter(), collections.Counter()
    samples = 0
    with open(raw, encoding="utf-8", errors="replace") as lines:
        text = lines.read().splitlines()
    for line in text:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        count = int(count)
        frames = [key(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        self_c[frames[-1]] += count
        for f in set(frames):
            total_c[f] += count
    print(f"{samples} samples (active threads only)\n")
    print("| # | self % | total % | function (file:function) |")
    print("|---|---|---|---|")
    for i, (f, c) in enumerate(self_c.most_common(n), 1):
        print(f"| {i} | {100 * c / samples:.1f} | {100 * total_c[f] / samples:.1f} | `{f}` |")


if __name__ == "__main__":
    main()
