"""Which live instance of a component gets a stanza: the balancing policies. Pure.

Every node makes this choice for the stanzas it routes, from its own view of the live
instances, so the hash-based policies must give the same answer on every node and in
every process: they use blake2b, never Python's hash() (salted per process).

Policies (ejabberd's `domain_balancing`, per component domain, in the replicated
component record):
- random: an instance on this node if there is one (no node link to cross), else a
  random remote one;
- source, destination, bare_source, bare_destination: the stable hash of that JID of
  the stanza, so one conversation stays with one instance.

With `buckets` N > 0 a hash policy goes through a fixed number of buckets: a key falls
in bucket stable_hash(key) % N, and each bucket belongs to the instance with the
highest rendezvous weight stable_hash(bucket, instance id) among the live ones. When an
instance goes, only its buckets move (each to its next-highest instance) and they move
back when it returns with the same id; plain modulo over the instance count (N = 0,
ejabberd's behaviour) moves most keys on any change.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence

from raftxmpp.jid import JID

POLICIES = ("random", "source", "destination", "bare_source", "bare_destination")


def stable_hash(text: str) -> int:
    """64 bits of blake2b: the same on every node, process and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def balancing_key(policy: str, sender: JID | None, target: JID) -> str | None:
    """The text a hash policy hashes; None for `random` (and unknown policies)."""
    if policy == "destination":
        return str(target)
    if policy == "bare_destination":
        return str(target.bare)
    if policy == "source":
        return str(sender) if sender is not None else ""
    if policy == "bare_source":
        return str(sender.bare) if sender is not None else ""
    return None


def bucket_of(key: str, buckets: int) -> int:
    return stable_hash(key) % buckets


def rendezvous_weight(bucket: int, instance_id: str) -> int:
    return stable_hash(f"{bucket}\0{instance_id}")


def bucket_owner(bucket: int, instance_ids: Iterable[str]) -> str:
    """The instance with the highest weight for `bucket` (ties, vanishingly rare, by id)."""
    return max(instance_ids, key=lambda iid: (rendezvous_weight(bucket, iid), iid))


def by_modulo(key: str, instance_ids: Sequence[str]) -> str:
    """Without buckets: the key's hash modulo the count of sorted live instance ids."""
    return instance_ids[stable_hash(key) % len(instance_ids)]


def choose(policy: str, buckets: int, key: str | None, instance_ids: Sequence[str],
           local_ids: Sequence[str], rng: random.Random | None = None) -> str:
    """One of `instance_ids` (sorted, not empty) for a stanza with balancing `key`.

    `local_ids` are the instances on the choosing node, preferred by `random`."""
    if key is None:
        pick = (rng or random).choice
        return pick(local_ids) if local_ids else pick(instance_ids)
    if buckets > 0:
        return bucket_owner(bucket_of(key, buckets), instance_ids)
    return by_modulo(key, instance_ids)
