#!/usr/bin/env python3
"""The long fuzzing run of the stream framer and negotiation core (not part of pytest).

    python tests/security/fuzz_long.py --seconds 300              # atheris if installed
    python tests/security/fuzz_long.py --seconds 300 --engine hypothesis

atheris (pip install atheris; libFuzzer, coverage-guided over raftxmpp's Python code)
is preferred; without it, hypothesis runs batches of examples until the time is up.
Both drive tests/security/fuzz_target.py, the same target the normal run fuzzes: any
exception other than a framer StreamError, or a broken property, is a crash. atheris
writes the crashing input to ./crash-*; reproduce with `--replay FILE`.
Figures from a run are recorded in README.md (Security).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _chunks_from(data: bytes) -> tuple[list[bytes], bool]:
    """Input layout: byte 0 = stage (how many valid steps first) and TLS flag; then
    runs of [length byte][bytes], one read each."""
    from tests.security.test_fuzz import STAGES, VALID_SESSION

    if not data:
        return [], False
    stage, tls = STAGES[data[0] % len(STAGES)], bool(data[0] & 0x80)
    chunks, rest = list(VALID_SESSION[:stage]), data[1:]
    while rest:
        size = rest[0] or 256
        chunks.append(rest[1:1 + size])
        rest = rest[1 + size:]
    return chunks, tls


def run_atheris(seconds: int, workdir: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["raftxmpp"]):
        from tests.security import fuzz_target

    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    from tests.security.test_fuzz import VALID_SESSION

    for index, step in enumerate(VALID_SESSION):  # seeds: each valid step as one read
        (corpus / f"seed{index}").write_bytes(bytes([index % 4]) + bytes([len(step) % 256]) + step)
    dictionary = workdir / "xmpp.dict"
    dictionary.write_text("".join(
        '"' + "".join(f"\\x{b:02x}" for b in fragment) + '"\n'
        for fragment in fuzz_target.FRAGMENTS if len(fragment) <= 128))

    def one_input(data: bytes) -> None:
        chunks, tls = _chunks_from(data)
        fuzz_target.drive(chunks, tls)

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-dict={dictionary}",
                   "-max_len=4096", "-rss_limit_mb=2048", "-print_final_stats=1",
                   str(corpus)], one_input)
    atheris.Fuzz()


def run_hypothesis(seconds: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.security import test_fuzz

    tried = 0
    deadline = time.monotonic() + seconds

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(stage=st.sampled_from(test_fuzz.STAGES),
           data=st.one_of(test_fuzz.randoms, test_fuzz.fragments),
           cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
           tls=st.booleans(), mutated=test_fuzz.mutated_session(), which=st.booleans())
    def batch(stage, data, cuts, tls, mutated, which):
        nonlocal tried
        tried += 1
        from tests.security.fuzz_target import drive

        if which:
            drive(test_fuzz.VALID_SESSION[:stage] + test_fuzz.split(data, cuts), tls)
        else:
            drive(mutated)

    started = time.monotonic()
    while time.monotonic() < deadline:
        batch()
    print(f"hypothesis: {tried} inputs in {time.monotonic() - started:.0f}s, crashes: 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--replay", type=Path, help="run one saved input (a crash file)")
    args = parser.parse_args()
    if args.replay is not None:
        from tests.security import fuzz_target

        chunks, tls = _chunks_from(args.replay.read_bytes())
        fuzz_target.drive(chunks, tls)
        print("no crash")
        return
    engine = args.engine
    if engine is None:
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    if engine == "atheris":
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raftxmpp-fuzz-"))
        print(f"atheris: corpus and crashes under {workdir}", flush=True)
        run_atheris(args.seconds, workdir)
    else:
        run_hypothesis(args.seconds)


if __name__ == "__main__":
    main()
