"""HTTP File Upload (XEP-0363) on one node: discovery, slots, PUT and GET, the errors
and the bad requests that must store nothing; and the state-machine ops."""

from __future__ import annotations

import hashlib
import html
import pickle
import re
from urllib.parse import urlsplit

import pytest
import trio

from raftxmpp.cluster.state import ClusterState
from raftxmpp.credentials import derive
from tests.web_client import arequest, start_node, ws_login

UPLOAD = "urn:xmpp:http:upload:0"


@pytest.fixture
async def node(nursery, tmp_path):
    node = await start_node(nursery, tmp_path)
    yield node
    node.request_stop()


@pytest.fixture
async def alice(node):
    client = await ws_login(node.http_port, "alice", "files")
    yield client
    await client.aclose()


async def iq(client, payload: str, to: str = "upload.localhost", kind: str = "get") -> str:
    iq.counter = getattr(iq, "counter", 0) + 1
    ident = f"u{iq.counter}"
    await client.send(f"<iq xmlns='jabber:client' type='{kind}' id='{ident}' to='{to}'>"
                      f"{payload}</iq>")
    return await client.receive_until(f"id=\"{ident}\"")


async def request_slot(client, name: str, size: int, content_type: str = "text/plain") -> str:
    return await iq(client, f"<request xmlns='{UPLOAD}' filename='{name}' size='{size}' "
                            f"content-type='{content_type}'/>")


def urls(answer: str) -> tuple[str, str]:
    put = html.unescape(re.search(r'<put url="([^"]+)"', answer).group(1))
    get = html.unescape(re.search(r'<get url="([^"]+)"', answer).group(1))
    return put, get


def target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def stored_files(node) -> list:
    root = node.config.node.data_dir / "uploads"
    return [p for p in root.rglob("*") if p.is_file()]


async def put(node, url: str, data: bytes, content_type: str = "text/plain", **headers):
    return await arequest(node.http_port, "PUT", target(url), data,
                          {"Content-Type": content_type, **headers})


# -- discovery (XEP-0363 §2) -------------------------------------------------------------------------


async def test_the_service_is_listed_in_disco_items_and_describes_itself(node, alice):
    """§2: the server's disco#items lists upload.<host>; its disco#info has identity
    store/file, the feature and max-file-size in a data form."""
    items = await iq(alice, "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                     to="localhost")
    assert 'jid="upload.localhost"' in items
    info = await iq(alice, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    assert 'category="store"' in info and 'type="file"' in info
    assert f'var="{UPLOAD}"' in info
    assert f"<value>{node.config.upload.max_file_size}</value>" in info


# -- slots, PUT, GET (§4) ------------------------------------------------------------------------------


async def test_a_file_goes_up_once_and_comes_down_with_its_type_and_ranges(node, alice):
    """§4 example 5-6: the PUT answers 201; the GET URL serves the bytes with the
    content type of the request; a byte range is 206 (RFC 9110 §14)."""
    data = b"hello, file upload\n" * 100
    put_url, get_url = urls(await request_slot(alice, "très cool.txt", len(data)))
    assert "/upload/" in put_url and "tr%C3%A8s%20cool.txt" in put_url
    status, _, _ = await put(node, put_url, data)
    assert status == 201
    status, headers, body = await arequest(node.http_port, "GET", target(get_url))
    assert (status, body) == (200, data)
    assert headers["content-type"] == "text/plain"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-disposition"].startswith("inline")
    status, headers, body = await arequest(node.http_port, "GET", target(get_url),
                                           headers={"Range": "bytes=7-11"})
    assert (status, body, headers["content-range"]) == (206, b"file ", f"bytes 7-11/{len(data)}")
    status, headers, body = await arequest(node.http_port, "HEAD", target(get_url))
    assert (status, body, headers["content-length"]) == (200, b"", str(len(data)))
    status, headers, _ = await arequest(node.http_port, "GET", target(get_url),
                                        headers={"Range": "bytes=99999-"})
    assert status == 416
    metadata = node.store.upload(put_url.split("/")[4])
    assert metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert metadata["holders"] == [node.config.node.name]
    status, _, _ = await put(node, put_url, data)
    assert status == 409  # a slot takes one file


async def test_an_unsafe_type_is_served_as_a_download(node, alice):
    put_url, get_url = urls(await request_slot(alice, "page.html", 20, "text/html"))
    assert (await put(node, put_url, b"<script>x()</script>", "text/html"))[0] == 201
    _, headers, _ = await arequest(node.http_port, "GET", target(get_url))
    assert headers["content-disposition"].startswith("attachment")
    assert "sandbox" in headers["content-security-policy"]


async def test_a_file_over_the_limit_is_refused_with_its_maximum(node, alice):
    """§5 example 7: <not-acceptable/> with <file-too-large><max-file-size/>."""
    limit = node.config.upload.max_file_size
    answer = await request_slot(alice, "big.bin", limit + 1)
    assert 'type="error"' in answer and "not-acceptable" in answer
    assert f"<max-file-size>{limit}</max-file-size>" in answer


async def test_the_quota_is_a_wait_error(node, alice):
    """§5 example 8: quota reached → <resource-constraint/> of type wait."""
    quota = node.config.upload.quota_per_account
    size = node.config.upload.max_file_size
    for n in range(quota // size):
        assert "<slot" in await request_slot(alice, f"f{n}.bin", size)
    answer = await request_slot(alice, "one-more.bin", size)
    assert "resource-constraint" in answer and 'type="wait"' in answer


async def test_bad_slot_requests_are_bad_request(node, alice):
    for attrs in ("filename='' size='10'", "filename='a/b' size='10'", "filename='x' size='-1'",
                  "filename='x' size='0'", "filename='x'"):
        answer = await iq(alice, f"<request xmlns='{UPLOAD}' {attrs}/>")
        assert "bad-request" in answer, attrs


# -- bad HTTP stores nothing -----------------------------------------------------------------------------


async def test_forged_expired_and_mismatched_puts_store_nothing(node, alice):
    data = b"0123456789"
    put_url, get_url = urls(await request_slot(alice, "a.txt", len(data)))
    forged = re.sub(r"s=[^&]+", "s=" + "A" * 43, put_url)
    assert (await put(node, forged, data))[0] == 403
    assert (await put(node, get_url, data))[0] == 403  # a GET URL does not allow a PUT
    expired = re.sub(r"e=\d+", "e=1000", put_url)
    assert (await put(node, expired, data))[0] == 403
    assert (await put(node, put_url, data + b"!"))[0] == 413
    assert (await put(node, put_url, data[:5]))[0] == 400
    assert (await put(node, put_url, data, "image/png"))[0] == 400
    unsigned = put_url.split("?")[0]
    assert (await put(node, unsigned, data))[0] == 403
    traversal = put_url.replace("/a.txt", "/..%2F..%2Fa.txt")
    assert (await put(node, traversal, data))[0] == 404
    other_name = put_url.replace("/a.txt", "/b.txt")
    assert (await put(node, other_name, data))[0] == 404
    assert stored_files(node) == []
    assert not node.store.upload(put_url.split("/")[4])["stored"]
    status, _, _ = await arequest(node.http_port, "GET", target(get_url))
    assert status == 404  # nothing uploaded yet


async def test_a_forged_get_is_403(node, alice):
    put_url, get_url = urls(await request_slot(alice, "a.txt", 3))
    assert (await put(node, put_url, b"abc"))[0] == 201
    forged = re.sub(r"s=[^&]+", "s=" + "B" * 43, get_url)
    assert (await arequest(node.http_port, "GET", target(forged)))[0] == 403
    assert (await arequest(node.http_port, "GET", target(put_url)))[0] == 403


async def test_expired_files_are_deleted_through_the_log(nursery, tmp_path):
    """Expiry goes through Raft: the leader's sweep commits upload_delete, and the bytes
    leave the disk when it applies; the GET is then 404 and the quota is free again."""
    import dataclasses

    node = await start_node(nursery, tmp_path)
    node.config = dataclasses.replace(node.config, upload=dataclasses.replace(
        node.config.upload, file_lifetime=1.0))
    try:
        upload = node.web.upload
        upload.config = node.config.upload
        nursery.start_soon(upload.run)  # a sweep with the short lifetime
        alice = await ws_login(node.http_port, "alice", "expiry")
        put_url, get_url = urls(await request_slot(alice, "short.txt", 4))
        assert (await put(node, put_url, b"gone"))[0] == 201
        assert len(stored_files(node)) == 1
        with trio.fail_after(10):
            while node.store.upload(put_url.split("/")[4]) is not None:
                await trio.sleep(0.1)
        assert stored_files(node) == []
        assert node.store.upload_usage("alice@localhost") == 0
        assert (await arequest(node.http_port, "GET", target(get_url)))[0] == 404
    finally:
        node.request_stop()


# -- the state-machine ops (apply, snapshot/restore, idempotent retry) -----------------------------------

SLOT = "ab" * 16


def _state() -> ClusterState:
    state = ClusterState()
    state.apply({"v": 1, "id": "r", "ts": 1.0, "op": "register", "jid": "a@h",
                 "credentials": derive("pw", 4096)})
    return state


def _slot_command(command_id: str = "s1", slot: str = SLOT, size: int = 10, **extra) -> dict:
    return {"v": 1, "id": command_id, "ts": 100.0, "op": "upload_slot", "jid": "a@h",
            "slot": slot, "name": "f.txt", "size": size, "type": "text/plain",
            "expires": 400.0, "max_size": 100, "quota": 25, **extra}


def test_upload_slot_reserves_quota_and_is_idempotent():
    state = _state()
    first = state.apply(_slot_command())
    assert first[0] == "ok" and first[1]["size"] == 10 and not first[1]["stored"]
    assert state.apply(_slot_command()) == first  # a retry with the same id
    assert state.upload_usage["a@h"] == 10
    assert state.apply(_slot_command("s2", "cd" * 16, 10))[0] == "ok"
    assert state.apply(_slot_command("s3", "ef" * 16, 10))[1] == "resource-constraint"
    assert state.apply(_slot_command("s4", "ef" * 16, 101))[1] == "not-acceptable"
    assert state.apply(_slot_command("s5", SLOT))[1] == "conflict"
    assert state.apply(_slot_command("s6", "ZZ" * 16))[1] == "bad-request"
    assert state.apply(_slot_command("s7", "ef" * 16, name="../x"))[1] == "bad-request"
    assert state.apply(_slot_command("s8", "ef" * 16, jid="nobody@h"))[1] == "item-not-found"
    assert state.upload_usage["a@h"] == 20


def test_upload_stored_records_the_hash_once():
    state = _state()
    state.apply(_slot_command())
    stored = {"v": 1, "id": "t1", "ts": 101.0, "op": "upload_stored", "jid": "a@h",
              "slot": SLOT, "sha256": "0" * 64, "holders": ["n2", "n1"], "file_expires": 900.0}
    assert state.apply(stored) == ("ok", True)
    assert state.apply(stored) == ("ok", True)  # retry: the remembered result
    assert state.apply({**stored, "id": "t2"}) == ("ok", False)  # same file again
    assert state.apply({**stored, "id": "t3", "sha256": "1" * 64})[1] == "conflict"
    assert state.apply({**stored, "id": "t4", "jid": "b@h"})[1] == "item-not-found"
    assert state.uploads[SLOT]["holders"] == ["n1", "n2"]


def test_upload_delete_frees_quota_and_a_sweep_deletes_only_what_expired():
    state = _state()
    state.apply(_slot_command())
    delete = {"v": 1, "id": "d1", "ts": 200.0, "op": "upload_delete", "jid": "a@h",
              "slot": SLOT, "before": 300.0}
    assert state.apply(delete) == ("ok", False)  # the slot expires at 400
    assert state.apply({**delete, "id": "d2", "before": 500.0}) == ("ok", True)
    assert state.apply({**delete, "id": "d2", "before": 500.0}) == ("ok", True)  # retry
    assert state.apply({**delete, "id": "d3", "before": None}) == ("ok", False)  # gone
    assert SLOT not in state.uploads and "a@h" not in state.upload_usage


def test_uploads_survive_snapshot_and_restore():
    state = _state()
    state.apply(_slot_command())
    restored = ClusterState()
    restored.restore(pickle.loads(pickle.dumps(state.snapshot())))
    assert restored.uploads == state.uploads and restored.upload_usage == {"a@h": 10}
    assert restored.digest() == state.digest()
    assert restored.apply(_slot_command()) == state.apply(_slot_command())  # dedup kept


def _stored_command(command_id: str = "t1", **extra) -> dict:
    return {"v": 1, "id": command_id, "ts": 101.0, "op": "upload_stored", "jid": "a@h",
            "slot": SLOT, "sha256": "0" * 64, "holders": ["n1"], **extra}


def test_upload_stored_keeps_the_file_expiry_or_none():
    state = _state()
    state.apply(_slot_command())
    assert state.apply(_stored_command(file_expires=900.0)) == ("ok", True)
    assert state.uploads[SLOT]["file_expires"] == 900.0
    state.apply(_slot_command("s2", "cd" * 16))
    assert state.apply(_stored_command("t2", slot="cd" * 16)) == ("ok", True)
    assert state.uploads["cd" * 16]["file_expires"] is None


UPLOAD_STORED_REFUSALS = [
    ({"sha256": "0" * 63}, "bad-request", "sha256 must be 64 lowercase hex digits"),
    ({"sha256": "A" * 64}, "bad-request", "sha256 must be 64 lowercase hex digits"),
    ({"sha256": "X" * 64}, "bad-request", "sha256 must be 64 lowercase hex digits"),
    ({"sha256": "0" * 65}, "bad-request", "sha256 must be a non-empty string of at most 64 chars"),
    ({"holders": "n1"}, "bad-request", "holders must be node names"),
    ({"holders": [1]}, "bad-request", "holders must be node names"),
    ({"file_expires": "soon"}, "bad-request", "file_expires must be a time or none"),
    ({"jid": "b@h"}, "item-not-found", f"no upload slot {SLOT} for b@h"),
]


@pytest.mark.parametrize(("extra", "condition", "text"), UPLOAD_STORED_REFUSALS)
def test_upload_stored_refuses_word_for_word(extra, condition, text):
    state = _state()
    state.apply(_slot_command())
    assert state.apply(_stored_command(**extra)) == ("error", condition, text)
    assert not state.uploads[SLOT]["stored"]


def test_upload_stored_with_another_hash_is_a_conflict_word_for_word():
    state = _state()
    state.apply(_slot_command())
    state.apply(_stored_command())
    assert state.apply(_stored_command("t2", sha256="1" * 64)) == \
        ("error", "conflict", "the slot holds another file already")
    assert state.uploads[SLOT]["sha256"] == "0" * 64


def test_upload_slot_records_exactly_what_was_asked():
    state = _state()
    slot = {"jid": "a@h", "name": "f.txt", "size": 10, "type": "text/plain", "created": 100.0,
            "expires": 400.0, "stored": False, "sha256": None, "holders": [],
            "file_expires": None}
    assert state.apply(_slot_command()) == ("ok", slot)
    assert state.uploads[SLOT] == slot


def test_upload_slot_extremes_are_accepted():
    state = _state()
    assert state.apply(_slot_command(name="n" * 255, type="t" * 255, size=5, quota=0))[0] == "ok"
    assert state.apply(_slot_command("s2", "cd" * 16, name="a b", size=10, quota=25))[0] == "ok"
    assert state.apply(_slot_command("s3", "ef" * 16, size=10, quota=25))[0] == "ok"  # 25 of 25
    assert state.upload_usage["a@h"] == 25
    assert state.apply(_slot_command("s4", "01" * 16, size=100, quota=0))[0] == "ok"  # = max_size


UPLOAD_SLOT_REFUSALS = [
    ({"slot": "ab" * 16 + "c"}, "bad-request", "slot must be a non-empty string of at most 32 chars"),
    ({"slot": "ab" * 15}, "bad-request", "slot must be 32 lowercase hex digits"),
    ({"slot": "XX" * 16}, "bad-request", "slot must be 32 lowercase hex digits"),
    ({"name": "n" * 256}, "bad-request", "name must be a non-empty string of at most 255 chars"),
    ({"type": "t" * 256}, "bad-request", "type must be a non-empty string of at most 255 chars"),
    ({"name": "."}, "bad-request", "the file name must not contain / or control characters"),
    ({"name": ".."}, "bad-request", "the file name must not contain / or control characters"),
    ({"name": "a\x1fb"}, "bad-request", "the file name must not contain / or control characters"),
    ({"size": -1}, "bad-request", "size must be a non-negative integer"),
    ({"max_size": True}, "bad-request", "max_size must be a non-negative integer"),
    ({"quota": "x"}, "bad-request", "quota must be a non-negative integer"),
    ({"expires": "soon"}, "bad-request", "expires must be a time"),
    ({"size": 0}, "not-acceptable", "file too large: at most 100 bytes"),
    ({"jid": "nobody@h"}, "item-not-found", "no account nobody@h"),
]


@pytest.mark.parametrize(("extra", "condition", "text"), UPLOAD_SLOT_REFUSALS)
def test_upload_slot_refuses_word_for_word(extra, condition, text):
    state = _state()
    assert state.apply(_slot_command(**extra)) == ("error", condition, text)
    assert state.uploads == {} and state.upload_usage == {}


def test_upload_slot_conflict_and_quota_word_for_word():
    state = _state()
    state.apply(_slot_command(size=20))
    assert state.apply(_slot_command("s2")) == ("error", "conflict", "slot id already used")
    assert state.apply(_slot_command("s3", "cd" * 16, size=6)) == \
        ("error", "resource-constraint", "upload quota of 25 bytes reached")


def test_upload_delete_of_a_stored_file_goes_by_the_file_expiry():
    state = _state()
    state.apply(_slot_command())  # the slot expires at 400
    state.apply(_stored_command(file_expires=900.0))
    delete = {"v": 1, "id": "d1", "ts": 200.0, "op": "upload_delete", "jid": "a@h",
              "slot": SLOT, "before": 500.0}
    assert state.apply(delete) == ("ok", False)
    assert state.apply({**delete, "id": "d2", "before": "later"}) == ("ok", False)
    assert state.apply({**delete, "id": "d3", "before": 900.0}) == ("ok", True)  # expired at 900


def test_upload_delete_gives_back_exactly_the_slots_size():
    state = _state()
    state.apply(_slot_command(size=10))
    state.apply(_slot_command("s2", "cd" * 16, size=1))
    delete = {"v": 1, "id": "d1", "ts": 200.0, "op": "upload_delete", "jid": "a@h", "slot": SLOT}
    assert state.apply(delete) == ("ok", True)
    assert state.upload_usage == {"a@h": 1}
    assert state.apply({**delete, "id": "d2", "slot": "cd" * 16}) == ("ok", True)
    assert state.upload_usage == {}
