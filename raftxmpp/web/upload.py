"""HTTP File Upload (XEP-0363 §4-§6): the PUT and GET of slot URLs, on any node.

PUT /upload/<slot>/<name>?e=…&s=…  The signature (raftxmpp.web.signing) binds the
    slot, name, size and content type the slot was granted for. The body is streamed
    to disk with its SHA-256, copied to the other live members, and the file is
    recorded in the replicated state (`upload_stored`) only once a majority of the
    cluster's members hold a verified copy: only then is the answer 201. A slot filled
    once is 409; a body of another size 400, over it 413.
GET|HEAD /upload/<slot>/<name>?e=…&s=…  Served from this node's copy, or from a copy
    fetched (and verified) from a node that has one; a single byte range gives 206
    (RFC 9110 §14), the content type is the one the slot was granted.

Expiry and deletion go through the Raft log: the leader's sweep deletes what expired
(`upload_delete` with the time it decided on), and every node removes its bytes when it
applies the deletion.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import trio

from raftxmpp.cluster.raft import RaftUnavailable
from raftxmpp.cluster.secrets import node_cluster_secret
from raftxmpp.cluster.store import StoreError
from raftxmpp.web.files import READ_CHUNK, SLOT, FileError, FileStore
from raftxmpp.web.http import HTTPError, Request, Response
from raftxmpp.web.signing import UploadURLs, upload_key

if TYPE_CHECKING:
    from raftxmpp.web.server import WebServer

log = logging.getLogger("raftxmpp.web.upload")

PREFIX = "/upload/"
SWEEP_PERIOD = 30.0
# Shown inline by browsers; anything else is a download, so an uploaded page or
# script never runs in this origin (and the CSP sandbox stops it if it did).
INLINE = re.compile(r"^(image/(png|jpeg|gif|webp|avif)|audio/[\w.+-]+|video/[\w.+-]+|"
                    r"text/plain)(;.*)?$", re.I)
UPLOAD_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class UploadEndpoint:
    def __init__(self, server: WebServer) -> None:
        self.server = server
        self.node = server.node
        self.config = server.node.config.upload
        key = upload_key(node_cluster_secret(server.node.config))
        self.urls = UploadURLs(key, server.public_url)
        self.files = FileStore(server.node.config.node.data_dir / "uploads", server.rpc_call,
                               self.config.max_file_size)
        server.rpc_register("upload.chunk", self.files.on_chunk)
        server.rpc_register("upload.commit", self.files.on_commit)
        server.rpc_register("upload.read", self.files.on_read)
        server.rpc_register("upload.discard", self.files.on_discard)

    # -- routing ---------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        slot, name = _slot_and_name(request.raw_path)
        if request.method == "PUT":
            return await self._put(request, slot, name)
        if request.method in ("GET", "HEAD"):
            return await self._get(request, slot, name)
        raise HTTPError(405, "PUT, GET or HEAD", [("Allow", "GET, HEAD, PUT, OPTIONS")])

    async def _metadata(self, slot: str, name: str) -> dict:
        upload = self.node.store.upload(slot)
        if upload is None:
            # The slot may have been granted on another node a moment ago.
            try:
                await self.node.raft.fresh()
            except RaftUnavailable:
                raise HTTPError(503, "the cluster cannot confirm this upload now") from None
            upload = self.node.store.upload(slot)
        if upload is None or upload["name"] != name:
            raise HTTPError(404, "no such upload")
        return upload

    # -- PUT -------------------------------------------------------------------------------------------

    async def _put(self, request: Request, slot: str, name: str) -> Response:
        upload = await self._metadata(slot, name)
        refused = self.urls.check_put(slot, name, upload["size"], upload["type"], request.query,
                                      time.time())
        if refused:
            raise HTTPError(403, refused)
        if upload["stored"]:
            raise HTTPError(409, "this slot has been used")
        declared = request.header("content-length")
        if not declared.isdigit():
            raise HTTPError(411, "Content-Length is required")
        if int(declared) > upload["size"]:
            raise HTTPError(413, f"the slot is for {upload['size']} bytes")
        if int(declared) != upload["size"]:
            raise HTTPError(400, f"the slot is for {upload['size']} bytes")
        content_type = request.header("content-type")
        if content_type and content_type.split(";")[0].strip().lower() \
                != upload["type"].split(";")[0].strip().lower():
            raise HTTPError(400, f"the slot is for Content-Type {upload['type']}")
        try:
            digest = await self.files.receive(slot, request.stream_body(upload["size"]),
                                              upload["size"])
        except FileError as exc:
            raise HTTPError(400, str(exc)) from None
        holders = await self._replicate(slot, digest, upload["size"])
        await self._record(upload, slot, digest, holders)
        return Response(201, b"", None, [("Location", request.raw_path)])

    async def _replicate(self, slot: str, digest: str, size: int) -> list[str]:
        """This node and the peers holding a verified copy; 503 below a majority."""
        members = self._member_names()
        peers = [m for m in members if m != self.server.node_name]
        holders = [self.server.node_name] + await self.files.push(slot, digest, size, peers)
        needed = len(members) // 2 + 1
        if len(holders) < needed:
            self.files.delete(slot)
            await self.files.discard(slot, holders[1:])
            raise HTTPError(503, f"the file reached {len(holders)} of the {needed} nodes it "
                            "must be on; try again")
        return holders

    def _member_names(self) -> list[str]:
        names = self.node.raft.read(lambda s: sorted(s.members))
        return names or [self.server.node_name]

    async def _record(self, upload: dict, slot: str, digest: str, holders: list[str]) -> None:
        lifetime = self.config.file_lifetime
        expires = math.ceil(time.time() + lifetime) if lifetime else None
        try:
            await self.node.store.upload_stored(upload["jid"], slot, digest, holders, expires)
        except RaftUnavailable:
            raise HTTPError(503, "the cluster cannot commit now; try again") from None
        except StoreError as exc:
            raise HTTPError(409 if exc.condition == "conflict" else 404, exc.text) from None

    # -- GET -------------------------------------------------------------------------------------------

    async def _get(self, request: Request, slot: str, name: str) -> Response:
        upload = await self._metadata(slot, name)
        refused = self.urls.check_get(slot, name, request.query, time.time())
        if refused:
            raise HTTPError(403, refused)
        if not upload["stored"]:
            raise HTTPError(404, "nothing has been uploaded to this slot yet")
        if not self.files.has(slot):
            peers = upload["holders"] + [m for m in self._member_names()
                                         if m not in upload["holders"]]
            # Peers whose link is up first: a dead holder would cost a link wait.
            peers = sorted((p for p in peers if p != self.server.node_name),
                           key=lambda p: not self.server.link_up(p))
            if not await self.files.fetch(slot, upload["sha256"], upload["size"], peers):
                raise HTTPError(503, "no live node holds this file now")
        return self._file_response(request, slot, upload)

    def _file_response(self, request: Request, slot: str, upload: dict) -> Response:
        size, content_type = upload["size"], upload["type"]
        start, end = 0, size - 1
        status = 200
        headers = [("Accept-Ranges", "bytes"), ("ETag", f'"{upload["sha256"]}"'),
                   ("Cache-Control", "public, max-age=86400"),
                   ("Content-Security-Policy", UPLOAD_CSP),
                   ("Content-Disposition", _disposition(content_type, upload["name"]))]
        wanted = request.header("range")
        if wanted and request.header("if-range", f'"{upload["sha256"]}"') == f'"{upload["sha256"]}"':
            start, end = _byte_range(wanted, size)
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        length = end - start + 1
        body = b"" if request.method == "HEAD" else self._read(slot, start, length)
        return Response(status, body, content_type, headers, length=length)

    async def _read(self, slot: str, start: int, length: int) -> AsyncIterator[bytes]:
        async with await trio.open_file(self.files.path(slot), "rb") as source:
            await source.seek(start)
            while length > 0:
                chunk = await source.read(min(READ_CHUNK, length))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk

    # -- expiry and deletion through the log ----------------------------------------------------------

    async def run(self) -> None:
        """The leader's sweep: deletes expired slots and files through the Raft log."""
        lifetimes = [self.config.slot_lifetime / 2]
        if self.config.file_lifetime:
            lifetimes.append(self.config.file_lifetime / 2)
        period = max(0.5, min([SWEEP_PERIOD, *lifetimes]))
        while True:
            await trio.sleep(period)
            now = time.time()
            await self.files.sweep_orphans(self.node.store.upload, now)
            raft = self.node.raft
            if raft is None or raft.status().get("role") != "leader":
                continue
            for jid, slot in self.node.store.uploads_expired(now):
                try:
                    await self.node.store.upload_delete(jid, slot, before=now)
                except (RaftUnavailable, StoreError) as exc:
                    log.info("expiry of upload %s postponed: %s", slot, exc)
                    break

    def deleted(self, slot: str) -> None:
        """Raft applied a deletion: this node's copy goes (trio thread)."""
        try:
            self.files.delete(slot)
        except (FileError, OSError) as exc:
            log.warning("could not delete upload %s: %s", slot, exc)


def _slot_and_name(raw_path: str) -> tuple[str, str]:
    """The slot id and the file name from /upload/<slot>/<name>; 404 for anything else
    (traversal, extra segments, a slot id that is not 32 hex digits)."""
    parts = raw_path[len(PREFIX):].split("/")
    if len(parts) != 2 or not SLOT.fullmatch(parts[0]):
        raise HTTPError(404, "no such upload")
    try:
        name = unquote(parts[1], errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(404, "no such upload") from None
    if not name or "/" in name or name in (".", ".."):
        raise HTTPError(404, "no such upload")
    return parts[0], name


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """One byte range (RFC 9110 §14.1.2); 416 when it cannot be satisfied."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise HTTPError(416, "one byte range, please", [("Content-Range", f"bytes */{size}")])
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HTTPError(416, "range not satisfiable", [("Content-Range", f"bytes */{size}")])
    return start, end


def _disposition(content_type: str, name: str) -> str:
    kind = "inline" if INLINE.match(content_type) else "attachment"
    return f"{kind}; filename*=UTF-8''{quote(name, safe='')}"
