"""Hypothesis fuzzing of the stream framer and the negotiation core, bounded for the
normal test run (the long run is tests/security/fuzz_long.py): random bytes, spliced
protocol fragments and mutated valid sessions, cut into arbitrary reads, sent from
every stage of negotiation (nothing yet, header sent, authenticated, bound)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.fuzz_target import BIND, FRAGMENTS, HEADER, PASSWORD, drive, plain

# One read per step: a client waits for <success/> before restarting the stream.
VALID_SESSION = [HEADER, plain("alice", PASSWORD), HEADER, BIND,
                 b"<message to='bob@localhost'><body>x</body></message>", b"</stream:stream>"]
STAGES = [0, 1, 2, 4]  # how many steps of VALID_SESSION come first

fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map(b"".join)
randoms = st.binary(max_size=600)


@st.composite
def mutated_session(draw) -> list[bytes]:
    """The valid session, step by step, with bytes flipped, inserted, deleted, spliced."""
    steps = [bytearray(step) for step in VALID_SESSION]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        data = steps[draw(st.integers(min_value=0, max_value=len(steps) - 1))]
        position = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        if kind == "flip" and position < len(data):
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[position:position + draw(st.integers(min_value=1, max_value=16))]
        else:
            data[position:position] = draw(st.sampled_from(FRAGMENTS))
    return [bytes(step) for step in steps]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    positions = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(positions, positions[1:], strict=False)]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    stage=st.sampled_from(STAGES),
    data=st.one_of(randoms, fragments),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    tls_available=st.booleans(),
)
def test_bytes_at_any_stage_have_only_defined_outcomes(stage, data, cuts, tls_available):
    drive(VALID_SESSION[:stage] + split(data, cuts), tls_available)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=mutated_session())
def test_mutated_sessions_have_only_defined_outcomes(steps):
    drive(steps)


def test_the_valid_session_reaches_bound_and_routes_a_stanza():
    output = b"".join(drive(VALID_SESSION))
    assert b"<success" in output and b"<jid>alice@localhost/r</jid>" in output


def test_an_iq_result_before_bind_is_dropped_not_answered():
    # The long hypothesis run's first find: answering it with an error raised ValueError.
    output = b"".join(drive(VALID_SESSION[:3] + [b"<iq type='result' id='x'/>" + BIND]))
    assert b"<jid>alice@localhost/r</jid>" in output and b"id=\"x\"" not in output
