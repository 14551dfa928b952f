"""The balancing math of component instances (raftxmpp.component.balancing). Pure.

Every node decides alone where a stanza for a component goes, so the hash policies
must agree across processes, and with buckets an instance's death must move its
buckets only, and its return must move them back.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from raftxmpp.component import balancing
from raftxmpp.component.balancing import (
    balancing_key,
    bucket_of,
    bucket_owner,
    choose,
    stable_hash,
)
from raftxmpp.jid import JID

INSTANCES = ("node1#0", "node2#0", "node3#0")
BUCKETS = 256


def owners(instances, buckets: int = BUCKETS) -> dict[int, str]:
    return {b: bucket_owner(b, sorted(instances)) for b in range(buckets)}


def test_stable_hash_is_the_same_in_another_process_whatever_its_hash_seed():
    words = ["alice@localhost/phone", "room@muc.localhost", "ünïcode@localhost"]
    code = ("from raftxmpp.component.balancing import stable_hash, bucket_owner;"
            f"print([stable_hash(w) for w in {words!r}], bucket_owner(7, {list(INSTANCES)!r}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == f"{[stable_hash(w) for w in words]} {bucket_owner(7, list(INSTANCES))}"


def test_stable_hash_is_64_bits_of_blake2b():
    assert stable_hash("a") == int.from_bytes(hashlib.blake2b(b"a", digest_size=8).digest(), "big")


@pytest.mark.parametrize(("policy", "expected"), [
    ("source", "alice@localhost/phone"),
    ("bare_source", "alice@localhost"),
    ("destination", "room@muc.localhost/nick"),
    ("bare_destination", "room@muc.localhost"),
    ("random", None),
])
def test_each_policy_hashes_its_own_jid(policy, expected):
    sender, target = JID.parse("alice@localhost/phone"), JID.parse("room@muc.localhost/nick")
    assert balancing_key(policy, sender, target) == expected


def test_every_bucket_has_exactly_one_owner_and_all_instances_get_a_share():
    shares = Counter(owners(INSTANCES).values())
    assert set(shares) == set(INSTANCES)
    assert all(count > BUCKETS / len(INSTANCES) / 2 for count in shares.values())


def test_when_an_instance_dies_only_its_buckets_move():
    before = owners(INSTANCES)
    after = owners([i for i in INSTANCES if i != "node2#0"])
    moved = {b for b in before if before[b] != after[b]}
    assert moved == {b for b, owner in before.items() if owner == "node2#0"}
    assert "node2#0" not in after.values()


def test_buckets_of_a_dead_instance_spread_over_the_survivors():
    before = owners(INSTANCES)
    after = owners([i for i in INSTANCES if i != "node2#0"])
    heirs = Counter(after[b] for b, owner in before.items() if owner == "node2#0")
    assert set(heirs) == {"node1#0", "node3#0"}


def test_when_the_instance_returns_its_buckets_move_back():
    before = owners(INSTANCES)
    owners([i for i in INSTANCES if i != "node3#0"])
    assert owners(INSTANCES) == before


def test_a_new_instance_takes_buckets_only_for_itself():
    before = owners(INSTANCES)
    after = owners([*INSTANCES, "node1#1"])
    assert all(after[b] in (before[b], "node1#1") for b in before)


def test_the_order_instances_are_listed_in_does_not_matter():
    assert bucket_owner(3, ["b", "a", "c"]) == bucket_owner(3, ["c", "b", "a"])


# Fixed values, computed once from the documented hash (blake2b, 8 bytes, big-endian) by
# a script that does not import raftxmpp: they pin the function across versions, and a
# change here moves every component conversation of a running cluster.
ALICE_HASH = 4708752803842332279
# Owner of buckets 0..31 among node1#0..node3#0, then among node1#0 and node2#0 ("1" =
# node1#0 ...).
OWNERS_OF_3 = "22213232331123323223133131331321"
OWNERS_OF_2 = "22212212111121121221121121221121"


def test_hash_and_buckets_match_the_fixed_table():
    assert stable_hash("alice@localhost") == ALICE_HASH
    assert bucket_of("alice@localhost", BUCKETS) == 119
    assert "".join(bucket_owner(b, INSTANCES)[4] for b in range(32)) == OWNERS_OF_3
    assert "".join(bucket_owner(b, INSTANCES[:2])[4] for b in range(32)) == OWNERS_OF_2


def test_hash_policy_keeps_one_key_on_one_instance():
    for buckets in (0, BUCKETS):
        picks = {choose("bare_source", buckets, "alice@localhost", INSTANCES, ()) for _ in range(20)}
        assert len(picks) == 1


def test_without_buckets_the_key_hash_is_taken_modulo_the_instance_count():
    # blake2b-64("bob@localhost") % 3 == 2 (the fixed table's script): the third instance.
    assert choose("source", 0, "bob@localhost", INSTANCES, ()) == "node3#0"


def test_random_prefers_an_instance_on_this_node():
    rng = random.Random(1)
    picks = {choose("random", 0, None, INSTANCES, ("node2#0",), rng) for _ in range(50)}
    assert picks == {"node2#0"}


def test_random_without_a_local_instance_spreads_over_the_remote_ones():
    rng = random.Random(2)
    picks = Counter(choose("random", 0, None, INSTANCES, (), rng) for _ in range(300))
    assert set(picks) == set(INSTANCES) and min(picks.values()) > 50


def test_hash_policies_spread_many_keys_over_every_instance():
    for buckets in (0, 64):
        picks = Counter(choose("source", buckets, f"user{n}@localhost/r", INSTANCES, ())
                        for n in range(600))
        assert set(picks) == set(INSTANCES) and min(picks.values()) > 100


def test_policies_are_those_the_state_machine_accepts():
    from raftxmpp.cluster.state import BALANCING

    assert tuple(BALANCING) == balancing.POLICIES


@pytest.mark.parametrize("policy", ["source", "bare_source"])
def test_a_stanza_without_a_sender_hashes_the_empty_key(policy):
    """A server-generated stanza has no 'from': every node must still agree on one key."""
    assert balancing_key(policy, None, JID.parse("room@muc.localhost/nick")) == ""


def test_a_single_bucket_sends_every_key_to_that_buckets_owner():
    """buckets = 1 is a bucket policy too (not modulo): bucket 0's owner among the three
    is node2#0 (OWNERS_OF_3[0]), where modulo would send bob@localhost to node3#0."""
    assert choose("source", 1, "bob@localhost", INSTANCES, ()) == "node2#0"


def test_random_draws_from_the_rng_it_is_given():
    class Recording:
        """An rng that notes what it was asked to choose from and takes the last."""

        def __init__(self):
            self.asked = []

        def choice(self, seq):
            self.asked.append(tuple(seq))
            return seq[-1]

    rng = Recording()
    assert choose("random", 0, None, INSTANCES, (), rng) == "node3#0"
    assert choose("random", 0, None, INSTANCES, ("node1#0", "node2#0"), rng) == "node2#0"
    assert rng.asked == [INSTANCES, ("node1#0", "node2#0")]
