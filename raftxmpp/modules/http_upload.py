"""HTTP File Upload (XEP-0363): the upload service's XMPP side, on `upload.<host>`.

Every node answers for the service: disco (§2: identity store/file, the feature, and
max-file-size as a data form), and slot requests (§4): the slot is reserved in the
replicated state within the account's quota (one Raft write), and answered with a
signed PUT URL and a signed GET URL (raftxmpp.web.signing). The bytes go over HTTP
to any node (raftxmpp.web.upload), never through XMPP or the Raft log.

Errors (§5): a file over the limit is <not-acceptable/> with <file-too-large/> and the
limit; the quota is <resource-constraint/> of type wait; a bad request <bad-request/>.
"""

from __future__ import annotations

import math
import secrets
import time

from lxml import etree

from raftxmpp.cluster.raft import RaftUnavailable, write_failure
from raftxmpp.cluster.secrets import node_cluster_secret
from raftxmpp.cluster.store import StoreError
from raftxmpp.jid import JID
from raftxmpp.routing.router import Router
from raftxmpp.routing.sessions import LocalSession
from raftxmpp.web.signing import UploadURLs, upload_key
from raftxmpp.web.urls import public_url
from raftxmpp.xml import ns
from raftxmpp.xml.errors import StanzaError, can_reply_with_error, error_reply
from raftxmpp.xml.stanza import make

IDENTITY = ("store", "file", "HTTP File Upload")
DEFAULT_TYPE = "application/octet-stream"


def setup(router: Router) -> None:
    cfg = router.config.upload
    base = public_url(router.config.http)
    if not cfg.enabled or not base:
        return
    service = UploadService(router, UploadURLs(upload_key(node_cluster_secret(router.config)),
                                               base))
    router.add_service(service.serves, service.handle)
    router.disco_items.append(service.items)


class UploadService:
    def __init__(self, router: Router, urls: UploadURLs) -> None:
        self.router = router
        self.config = router.config.upload
        self.urls = urls
        self.prefix, _, self.suffix = self.config.domain.partition("{host}")

    def domain_for(self, host: str) -> str:
        return f"{self.prefix}{host}{self.suffix}" if "{host}" in self.config.domain \
            else self.config.domain

    def serves(self, domain: str) -> bool:
        if "{host}" not in self.config.domain:
            return domain == self.config.domain
        if not (domain.startswith(self.prefix) and domain.endswith(self.suffix)):
            return False
        host = domain[len(self.prefix):len(domain) - len(self.suffix) or None]
        return host in self.router.served_hosts()

    def items(self, host: str) -> list[str]:
        return [self.domain_for(host)]

    # -- stanzas to the service -------------------------------------------------------------------

    async def handle(self, stanza: etree._Element, target: JID,
                     sender: LocalSession | None) -> None:
        if stanza.tag != f"{{{ns.CLIENT}}}iq" or stanza.get("type") not in ("get", "set"):
            return  # messages, presence and IQ answers: nothing here reads them
        if len(stanza) != 1:
            raise StanzaError("bad-request", text="an iq get or set carries exactly one payload")
        payload = stanza[0]
        kind = (stanza.get("type"), payload.tag)
        if kind == ("get", f"{{{ns.DISCO_INFO}}}query"):
            result = self._disco_info(payload)
        elif kind == ("get", f"{{{ns.DISCO_ITEMS}}}query"):
            result = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
        elif kind == ("get", f"{{{ns.HTTP_UPLOAD}}}request"):
            result = await self._slot(payload, stanza)
        else:
            raise StanzaError("service-unavailable")
        reply = make("iq", {"type": "result", "id": stanza.get("id"), "to": stanza.get("from"),
                            "from": stanza.get("to")})
        reply.append(result)
        if sender is not None:
            sender.send_stanza(reply)
        else:
            await self.router.route(reply, None)

    def _disco_info(self, payload: etree._Element) -> etree._Element:
        if payload.get("node"):
            raise StanzaError("item-not-found")
        query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
        category, kind, name = IDENTITY
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", category=category, type=kind,
                         name=name)
        for feature in (ns.DISCO_INFO, ns.DISCO_ITEMS, ns.HTTP_UPLOAD):
            etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
        form = etree.SubElement(query, f"{{{ns.DATA_FORMS}}}x", nsmap={None: ns.DATA_FORMS},
                                type="result")
        for var, value in (("FORM_TYPE", ns.HTTP_UPLOAD),
                           ("max-file-size", str(self.config.max_file_size))):
            field = etree.SubElement(form, f"{{{ns.DATA_FORMS}}}field", var=var)
            if var == "FORM_TYPE":
                field.set("type", "hidden")
            etree.SubElement(field, f"{{{ns.DATA_FORMS}}}value").text = value
        return query

    async def _slot(self, request: etree._Element, stanza: etree._Element) -> etree._Element:
        owner = str(JID.parse(stanza.get("from")).bare)
        name = (request.get("filename") or "").strip()
        size_text = request.get("size") or ""
        content_type = (request.get("content-type") or DEFAULT_TYPE).strip()[:255] or DEFAULT_TYPE
        if not name or len(name.encode()) > 255 or "/" in name or name in (".", "..") \
                or any(ord(c) < 32 for c in name):
            raise StanzaError("bad-request", text="a file name, without / or control characters")
        if not size_text.isdigit() or int(size_text) == 0:
            raise StanzaError("bad-request", text="size must be a positive number of bytes")
        size = int(size_text)
        if size > self.config.max_file_size:
            raise _too_large(self.config.max_file_size)
        slot = secrets.token_hex(16)
        now = time.time()
        expires = math.ceil(now + self.config.slot_lifetime)
        try:
            await self.router.store.upload_slot(
                owner, slot, name, size, content_type, expires, self.config.max_file_size,
                self.config.quota_per_account)
        except StoreError as exc:
            if exc.condition == "resource-constraint":
                raise StanzaError("resource-constraint", type="wait", text=exc.text) from None
            if exc.condition == "not-acceptable":
                raise _too_large(self.config.max_file_size) from None
            raise StanzaError(exc.condition, text=exc.text or None) from None
        except RaftUnavailable as exc:
            condition, text = write_failure(exc)
            raise StanzaError(condition, type="wait", text=text) from None
        lifetime = self.config.file_lifetime
        get_expires = math.ceil(expires + lifetime) if lifetime else 0
        result = etree.Element(f"{{{ns.HTTP_UPLOAD}}}slot", nsmap={None: ns.HTTP_UPLOAD})
        etree.SubElement(result, f"{{{ns.HTTP_UPLOAD}}}put",
                         url=self.urls.put_url(slot, name, size, content_type, expires))
        etree.SubElement(result, f"{{{ns.HTTP_UPLOAD}}}get",
                         url=self.urls.get_url(slot, name, get_expires))
        return result


def _too_large(limit: int) -> StanzaError:
    """§5: <not-acceptable/> with <file-too-large><max-file-size/></file-too-large>."""
    error = StanzaError("not-acceptable", type="modify", text=f"file too large: at most {limit} bytes")
    app = etree.Element(f"{{{ns.HTTP_UPLOAD}}}file-too-large", nsmap={None: ns.HTTP_UPLOAD})
    etree.SubElement(app, f"{{{ns.HTTP_UPLOAD}}}max-file-size").text = str(limit)
    error.application = app
    return error


__all__ = ["setup", "UploadService", "can_reply_with_error", "error_reply"]
