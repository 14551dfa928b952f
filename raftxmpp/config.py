"""Node configuration: a TOML file validated once, at start-up, into typed objects.

Nothing after start-up reads raw config dicts. Every mistake an operator can make
(unknown key, wrong type, bad address, missing cluster secret) becomes one
`ConfigError` whose message names the file, the section and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from raftxmpp.jid import JID, InvalidJID


class ConfigError(Exception):
    """A configuration problem, phrased for the operator on one line."""


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host.strip("[]"), number)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Secret(str):
    """A string that never shows itself in a repr, a log line or `cluster status`."""

    def __repr__(self) -> str:
        return "Secret('***')"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "raftxmpp"


@dataclass(frozen=True)
class NodeSection:
    name: str = "node1"
    data_dir: Path = field(default_factory=default_data_dir)
    hosts: tuple[str, ...] = ("localhost",)


@dataclass(frozen=True)
class ClusterSection:
    raft: Address = Address("127.0.0.1", 5270)
    peers: tuple[Address, ...] = ()
    link: Address = Address("127.0.0.1", 5271)
    # Node links carry stanzas between nodes: AES-GCM with per-connection keys from the
    # secret. Off only on a network that is private and trusted end to end.
    encrypt_links: bool = True
    secret: Secret | None = None
    secret_file: Path | None = None
    # The example cluster's secret (config/cluster-3) is public: refused unless this is
    # set, and then only with the Raft and link addresses on loopback.
    allow_example_secret: bool = False
    election_timeout_min: float = 0.3
    election_timeout_max: float = 0.6
    heartbeat_period: float = 0.05
    # Seconds between snapshots (with log compaction) at most, each node in its own slot;
    # sooner when 20,000 entries wait. The snapshot carries the message archive's file.
    snapshot_interval: float = 60.0


@dataclass(frozen=True)
class C2SSection:
    listen: Address | None = Address("127.0.0.1", 5222)
    tls_listen: Address | None = Address("127.0.0.1", 5223)
    require_tls: bool = True
    # For load generators only: SASL PLAIN without TLS, and only on a loopback listener.
    plaintext_auth_on_loopback: bool = False
    max_stanza_size: int = 262144
    registration: bool = False
    scram_iterations: int = 4096
    # Hostile-input bounds (raftxmpp.xml.framer, raftxmpp.c2s.connection).
    max_stanza_depth: int = 64  # element nesting, the stanza itself being level 1
    max_idle_whitespace: int = 1048576  # whitespace bytes between two stanzas (keepalives)
    pre_auth_timeout: float = 60.0  # seconds to authenticate and bind
    send_timeout: float = 30.0  # a write blocked longer than this ends a slow client
    # XMPP Ping (XEP-0199) from the server: a client silent this many seconds is pinged …
    ping_interval: float = 300.0  # … (0 = never)
    ping_timeout: float = 60.0  # … and without a byte from it this long after, it is gone
    # (a stream-management session is then detached, ready to be resumed).
    csi_max_held: int = 100  # stanzas held back from an inactive client (XEP-0352), then flushed


@dataclass(frozen=True)
class TLSSection:
    certificate: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class LimitsSection:
    offline_queue: int = 100
    resources_per_account: int = 10
    roster_size: int = 1000
    # Per client address (raftxmpp.c2s.limits); 0 switches a limit off.
    connections_per_ip: int = 100
    pre_auth_connections_per_ip: int = 20
    connection_rate_per_ip: float = 20.0  # new connections a second (token bucket) …
    connection_burst_per_ip: int = 40  # … of this size
    c2s_read_rate: int = 102400  # bytes a second each client session may send …
    c2s_read_burst: int = 524288  # … of this burst; past it the node stops reading
    auth_failures_per_ip: int = 20  # failed logins, then <temporary-auth-failure/> …
    auth_failures_per_account: int = 10
    auth_failure_window: float = 600.0  # … until the counter drains over this many seconds
    registrations_per_ip: int = 5  # in-band registrations (XEP-0077) …
    registration_window: float = 3600.0  # … per this many seconds (a token bucket)
    # Not limited per address: a local load generator or TCP proxy speaks for many users.
    exempt_ips: tuple[str, ...] = ("127.0.0.0/8", "::1")
    # -- abuse by one account or one outsider (issue 13) --
    # What the per-address limits count under: an IPv4 address (or network) and an
    # IPv6 /64, which one subscriber holds whole and rotates through at will.
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    # Unauthenticated connections one listener holds over all addresses together.
    pre_auth_connections_per_listener: int = 1000
    # Failed logins for one account from one source: then that source is refused …
    auth_failures_per_account_and_ip: int = 5
    # … while past auth_failures_per_account a login from a source the account never
    # logged in from waits (1 s, doubling) up to this many seconds; sources it logged
    # in from within trusted_source_ttl seconds do not wait.
    auth_failure_delay_max: float = 20.0
    trusted_source_ttl: float = 2592000.0  # 30 days; 0 remembers none
    # Per-account quotas on the replicated state (raftxmpp.cluster.quotas); 0: none.
    pending_subscriptions: int = 100  # subscription requests waiting for an answer
    private_keys_per_account: int = 100  # private XML elements (XEP-0049) …
    private_bytes_per_account: int = 262144  # … and their bytes together
    blocklist_size: int = 1000  # JIDs on one block list (XEP-0191)
    vcard_size: int = 262144  # bytes of one vCard (XEP-0054), photo included
    # Presence broadcasts a second per session, with this burst; past it the latest
    # presence waits and replaces any waiting one (raftxmpp.modules.presence_pacing).
    presence_rate: float = 2.0
    presence_burst: int = 10


@dataclass(frozen=True)
class LogSection:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class HTTPSection:
    # The node's HTTP server (raftxmpp.web): metrics and health checks, WebSocket,
    # BOSH, host-meta and file upload. "" in the file turns a listener off.
    listen: Address | None = Address("127.0.0.1", 5280)  # plain HTTP, for a reverse proxy
    tls_listen: Address | None = None  # HTTPS with the [tls] certificate; off unless set
    # Clients reach the plain listener through a proxy that terminates TLS: count them
    # as encrypted (SASL PLAIN allowed, as on the TLS listener).
    proxy_terminates_tls: bool = True
    # The URL clients reach this node (or the load balancer in front) by, for host-meta,
    # upload slots and see-other-uri; "" = derived from tls_listen, else listen.
    public_url: str = ""
    cors_origins: tuple[str, ...] = ("*",)  # origins a browser may call from; [] = none
    max_request_head: int = 8192  # bytes of request line and headers, then 431
    request_timeout: float = 10.0  # seconds to send a request head (slowloris), then 408
    keepalive_timeout: float = 60.0  # an idle keep-alive connection is closed after this
    max_connections: int = 4096  # HTTP connections at once on this node
    websocket_ping_interval: float = 30.0  # a WebSocket ping; no pong by the next one ends it
    bosh_max_wait: float = 60.0  # the longest a BOSH request is held (XEP-0124 'wait')
    bosh_inactivity: float = 60.0  # a BOSH session with no request for this long ends
    bosh_max_pause: float = 300.0  # the longest pause a BOSH client may ask for


@dataclass(frozen=True)
class UploadSection:
    # HTTP File Upload (XEP-0363, raftxmpp.modules.http_upload, raftxmpp.web.upload).
    enabled: bool = True
    domain: str = "upload.{host}"  # the upload service's JID; {host} = each served host
    max_file_size: int = 10485760  # bytes
    quota_per_account: int = 104857600  # bytes of stored files per account; 0 = none
    slot_lifetime: float = 300.0  # seconds a slot's PUT URL stays valid
    file_lifetime: float = 2592000.0  # seconds a file is kept (30 days); 0 = until deleted


@dataclass(frozen=True)
class ComponentsSection:
    # External components (XEP-0114, raftxmpp.component); "" in the file turns it off.
    listen: Address | None = Address("127.0.0.1", 5347)
    max_stanza_size: int = 262144
    handshake_timeout: float = 30.0  # seconds to open the stream and complete the handshake
    send_timeout: float = 30.0  # a write blocked longer than this ends a component that stopped reading


# -- service administration and contact addresses ---------------------------------------


@dataclass(frozen=True)
class AdminsSection:
    # Accounts (bare JIDs) allowed the XEP-0133 service-administration commands that
    # Gajim and Psi offer on the server: add and delete users, passwords, announcements …
    jids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContactAddressesSection:
    # XEP-0157: who to contact about this service, shown by clients from service
    # discovery; each a URI ("xmpp:admin@example.org", "mailto:abuse@example.org", "https://…").
    abuse: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()
    sales: tuple[str, ...] = ()
    security: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    support: tuple[str, ...] = ()


# -- [s2s]: server-to-server federation (raftxmpp.s2s, raftxmpp.routing.s2s) -------------------


@dataclass(frozen=True)
class S2SSection:
    enabled: bool = True  # false: no listener, stanzas for other servers bounce
    listen: Address | None = Address("127.0.0.1", 5269)  # STARTTLS (RFC 6120)
    tls_listen: Address | None = None  # direct TLS (XEP-0368), e.g. 0.0.0.0:5270 in production
    require_tls: bool = True  # both ways: no stanza over an unencrypted server stream
    require_valid_certificates: bool = False  # true: SASL EXTERNAL only, never dialback
    ca_file: Path | None = None  # trust anchors for peers' certificates, besides the system's
    allow: tuple[str, ...] = ()  # if set, federate with these domains only
    deny: tuple[str, ...] = ()  # never federate with these domains
    connect_timeout: float = 30.0  # DNS + TCP + TLS + authentication of an outgoing stream
    auth_timeout: float = 60.0  # a peer's incoming stream must authenticate within this
    idle_timeout: float = 600.0  # an outgoing stream unused this long is closed
    send_timeout: float = 30.0  # a peer that stops reading this long is cut off
    failure_backoff: float = 10.0  # after a failed attempt, bounce at once for this long
    max_queue: int = 1000  # stanzas held per remote domain while its stream is set up
    max_stanza_size: int = 262144
    max_incoming_per_ip: int = 50  # open incoming streams from one address
    incoming_rate_per_ip: float = 5.0  # new incoming streams a second from one address …
    incoming_burst_per_ip: int = 20  # … with this burst
    metrics_domains: int = 100  # remote domains with their own metric labels; others: "other"


@dataclass(frozen=True)
class PubsubSection:
    # Publish-subscribe (raftxmpp.modules.pubsub): PEP on every account, and a XEP-0060
    # service on "<service>.<host>" for each served host ("" turns the service off).
    service: str = "pubsub"
    node_creation: str = "accounts"  # who creates service nodes: accounts, or operator (CLI only)
    max_items: int = 256  # items a node keeps at most; what a node's max_items "max" means
    pep_default_max_items: int = 1  # of a new PEP node, unless the client asks otherwise
    service_default_max_items: int = 10  # of a new service node
    max_item_bytes: int = 65536  # one item's payload
    max_avatar_bytes: int = 131072  # one item of urn:xmpp:avatar:data (XEP-0084)
    max_node_bytes: int = 1048576  # every item of one node
    max_account_bytes: int = 1048576  # every PEP item of one account
    max_nodes_per_account: int = 100
    max_service_nodes: int = 10000  # per service domain


@dataclass(frozen=True)
class MucSection:
    # Multi-user chat (raftxmpp.modules.muc, XEP-0045) on "<service>.<host>" for each
    # served host ("" turns it off).
    service: str = "conference"
    room_creation: str = "accounts"  # who creates rooms: accounts, or operator (existing only)
    max_rooms: int = 10000  # per service domain
    max_rooms_per_owner: int = 100
    max_occupants: int = 1000  # per room, whatever its maxusers says
    history_length: int = 50  # messages each node keeps per room for the history on join
    max_message_rate: float = 10.0  # groupchat messages a second per occupant …
    message_burst: int = 20  # … with this burst


@dataclass(frozen=True)
class ExternalService:
    """One STUN or TURN server a client may use for calls (XEP-0215)."""

    type: str  # stun, stuns, turn, turns
    host: str
    port: int
    transport: str  # udp or tcp

    @classmethod
    def parse(cls, text: str) -> ExternalService:
        """"type:host:port[:transport]", e.g. "turn:turn.example.org:3478:udp"."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in ("stun", "stuns", "turn", "turns"):
            raise ValueError(f"expected TYPE:HOST:PORT[:TRANSPORT] with TYPE stun, stuns, turn "
                             f"or turns, got {text!r}")
        kind, host, port = parts[:3]
        transport = parts[3] if len(parts) == 4 else ("tcp" if kind.endswith("s") else "udp")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"bad host or port in {text!r}")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp in {text!r}")
        return cls(kind, host, int(port), transport)

    @property
    def restricted(self) -> bool:
        """TURN relays need credentials; STUN answers anybody."""
        return self.type in ("turn", "turns")


@dataclass(frozen=True)
class ExternalServicesSection:
    # External service discovery (XEP-0215, raftxmpp.modules.external_services): the
    # STUN/TURN servers clients use for calls, as "type:host:port[:transport]".
    services: tuple[str, ...] = ()
    # The TURN server's shared secret (coturn: use-auth-secret, static-auth-secret):
    # clients get time-limited credentials from it (the TURN REST API, RFC 7635 style).
    secret: Secret | None = None
    secret_file: Path | None = None
    credential_lifetime: float = 86400.0  # seconds a credential is valid

    def parsed(self) -> tuple[ExternalService, ...]:
        return tuple(ExternalService.parse(text) for text in self.services)


@dataclass(frozen=True)
class StreamManagementSection:
    # Stream management (XEP-0198; raftxmpp.c2s.sm, raftxmpp.modules.stream_management).
    enabled: bool = True
    resume_timeout: float = 300.0  # seconds a detached session waits for its client ('max')
    ack_every: int = 5  # stanzas sent, then the server asks for an ack (<r/>) …
    ack_interval: float = 30.0  # … or after this many seconds with stanzas unacknowledged
    max_unacked: int = 2000  # stanzas a client may leave unacknowledged; more ends its session
    location: str = ""  # "host:port" a client should resume at; "" = any node will do
    # The handled count of an ended session is kept this long, for <failed h='…'/>.
    remember_ended: float = 900.0


@dataclass(frozen=True)
class ArchiveSection:
    # Message archive (XEP-0313, raftxmpp.modules.mam): one-to-one messages of every
    # account, in each node's archive.sqlite3 (raftxmpp.cluster.archive).
    enabled: bool = True
    default: str = "always"  # an account's default until it sets its own: always, never, roster
    max_per_account: int = 0  # messages kept per account, the oldest dropped first; 0: no limit
    retention_days: float = 0.0  # messages older than this are deleted; 0: kept for ever
    page_size: int = 50  # results a query returns without <max/> …
    max_page_size: int = 250  # … and at most
    batch_rows: int = 1000  # rows of one Raft entry at most (and 1 MiB of stanzas) …
    flush_interval: float = 0.05  # … and seconds a row waits for the entry at most


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    c2s: C2SSection = field(default_factory=C2SSection)
    tls: TLSSection = field(default_factory=TLSSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    http: HTTPSection = field(default_factory=HTTPSection)
    components: ComponentsSection = field(default_factory=ComponentsSection)
    admins: AdminsSection = field(default_factory=AdminsSection)
    contact_addresses: ContactAddressesSection = field(default_factory=ContactAddressesSection)
    s2s: S2SSection = field(default_factory=S2SSection)
    pubsub: PubsubSection = field(default_factory=PubsubSection)
    muc: MucSection = field(default_factory=MucSection)
    upload: UploadSection = field(default_factory=UploadSection)
    stream_management: StreamManagementSection = field(default_factory=StreamManagementSection)
    external_services: ExternalServicesSection = field(default_factory=ExternalServicesSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    source: str = "<embedded default>"

    @property
    def is_multi_node(self) -> bool:
        return bool(self.cluster.peers)

    def cluster_secret(self) -> Secret | None:
        if self.cluster.secret is not None:
            return self.cluster.secret
        if self.cluster.secret_file is not None:
            return _read_secret_file(self.cluster.secret_file, self.source)
        return None

    def turn_secret(self) -> Secret | None:
        """[external_services] secret, or the contents of its secret_file."""
        section = self.external_services
        if section.secret is not None:
            return section.secret
        if section.secret_file is not None:
            return _read_secret_file(section.secret_file, self.source, "external_services")
        return None


def embedded_default(data_dir: Path | None = None) -> Config:
    """One node serving `localhost` with in-band registration on, as the README promises."""
    node = NodeSection(data_dir=data_dir or default_data_dir())
    return Config(node=node, c2s=C2SSection(registration=True))


def load(path: Path, data_dir: Path | None = None, read_files: bool = True) -> Config:
    """Reads and validates a TOML file; raises ConfigError with a one-line message.

    read_files=False leaves files the config names (secret_file) unread: for checking
    a config on another machine than the node's."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(raw, source=str(path), base_dir=path.parent, data_dir=data_dir,
                     read_files=read_files)


def from_dict(
    raw: dict, source: str, base_dir: Path, data_dir: Path | None = None,
    read_files: bool = True,
) -> Config:
    sections: dict[str, object] = {}
    for f in dataclasses.fields(Config):
        if f.name == "source":
            continue
        section_type = _SECTION_TYPES[f.name]  # f.type is a string under `annotations`
        section_raw = raw.get(f.name, {})
        if not isinstance(section_raw, dict):
            raise ConfigError(f"{source}: [{f.name}] must be a table")
        sections[f.name] = _build_section(section_type, section_raw, f.name, source, base_dir)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]")
    config = Config(**sections, source=source)
    if data_dir is not None:
        config = dataclasses.replace(config, node=dataclasses.replace(config.node, data_dir=data_dir))
    _check(config, read_files)
    return config


_SECTION_TYPES = {
    "node": NodeSection,
    "cluster": ClusterSection,
    "c2s": C2SSection,
    "tls": TLSSection,
    "limits": LimitsSection,
    "log": LogSection,
    "http": HTTPSection,
    "components": ComponentsSection,
    "admins": AdminsSection,
    "contact_addresses": ContactAddressesSection,
    "s2s": S2SSection,
    "pubsub": PubsubSection,
    "muc": MucSection,
    "upload": UploadSection,
    "stream_management": StreamManagementSection,
    "external_services": ExternalServicesSection,
    "archive": ArchiveSection,
}


def _build_section(cls: type, raw: dict, name: str, source: str, base_dir: Path):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{source}: [{name}] unknown key {key!r}")
        try:
            values[key] = _convert(hints[key], value, base_dir)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: [{name}] {key}: {exc}") from None
    return cls(**values)


def _convert(hint, value, base_dir: Path):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value == "" and len(options) < len(typing.get_args(hint)):
            return None  # an optional key set to "" is switched off
        return _convert(options[0], value, base_dir)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, base_dir) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    if hint is Address:
        return Address.parse(value)
    if hint is Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base_dir / path).resolve()
    if hint is Secret:
        return Secret(value)
    return value


def _check(config: Config, read_files: bool = True) -> None:
    source = config.source
    if not config.node.hosts:
        raise ConfigError(f"{source}: [node] hosts must name at least one domain")
    if config.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{source}: [log] level must be debug, info, warning or error")
    if config.log.format not in ("text", "json"):
        raise ConfigError(f"{source}: [log] format must be text or json")
    if config.cluster.raft in config.cluster.peers:
        raise ConfigError(f"{source}: [cluster] peers must not include this node's raft address")
    if config.cluster.secret is not None and config.cluster.secret_file is not None:
        raise ConfigError(f"{source}: [cluster] set secret or secret_file, not both")
    if config.is_multi_node and config.cluster.secret is None and config.cluster.secret_file is None:
        raise ConfigError(
            f"{source}: [cluster] a multi-node cluster needs a shared secret (secret_file or secret)"
        )
    secret = config.cluster_secret() if read_files else config.cluster.secret
    if secret is not None and len(secret) < 16:
        raise ConfigError(f"{source}: [cluster] the cluster secret must be at least 16 characters")
    _check_secret_exposure(config, secret, read_files)
    if (config.tls.certificate is None) != (config.tls.key is None):
        raise ConfigError(f"{source}: [tls] certificate and key go together")
    if config.c2s.scram_iterations < 4096:
        raise ConfigError(f"{source}: [c2s] scram_iterations must be at least 4096 (RFC 7677)")
    if config.c2s.listen is None and config.c2s.tls_listen is None:
        raise ConfigError(f"{source}: [c2s] needs listen or tls_listen")
    _check_limits(config)
    _check_service(config)
    _check_s2s(config)
    _check_pubsub(config)
    _check_muc(config)
    _check_web(config)
    _check_archive(config)
    _check_external_services(config, read_files)
    lo, hi = config.cluster.election_timeout_min, config.cluster.election_timeout_max
    if config.cluster.snapshot_interval <= 0:
        raise ConfigError(f"{source}: [cluster] snapshot_interval must be positive")
    if not 3 * config.cluster.heartbeat_period < lo < hi:
        raise ConfigError(
            f"{source}: [cluster] need 3 × heartbeat_period < election_timeout_min < election_timeout_max"
        )


def _check_external_services(config: Config, read_files: bool) -> None:
    section = config.external_services
    try:
        services = section.parsed()
    except ValueError as exc:
        raise ConfigError(f"{config.source}: [external_services] services: {exc}") from None
    if section.secret is not None and section.secret_file is not None:
        raise ConfigError(f"{config.source}: [external_services] set secret or secret_file, "
                          "not both")
    if section.credential_lifetime <= 0:
        raise ConfigError(f"{config.source}: [external_services] credential_lifetime must be "
                          "positive")
    if read_files and any(s.restricted for s in services) and config.turn_secret() is None:
        raise ConfigError(f"{config.source}: [external_services] a TURN service needs secret "
                          "or secret_file (its static-auth-secret)")


def _check_limits(config: Config) -> None:
    """[c2s] input bounds and [limits]: the values the connection code trusts."""
    source, c2s, limits = config.source, config.c2s, config.limits
    for key in ("max_stanza_size", "max_stanza_depth", "max_idle_whitespace"):
        if getattr(c2s, key) < 1:
            raise ConfigError(f"{source}: [c2s] {key} must be at least 1")
    for key in ("pre_auth_timeout", "send_timeout"):
        if getattr(c2s, key) <= 0:
            raise ConfigError(f"{source}: [c2s] {key} must be positive")
    components = config.components
    if components.max_stanza_size < 1:
        raise ConfigError(f"{source}: [components] max_stanza_size must be at least 1")
    for key in ("handshake_timeout", "send_timeout"):
        if getattr(components, key) <= 0:
            raise ConfigError(f"{source}: [components] {key} must be positive")
    if limits.connection_rate_per_ip > 0 and limits.connection_burst_per_ip < 1:
        raise ConfigError(f"{source}: [limits] connection_burst_per_ip must be at least 1")
    if limits.presence_rate > 0 and limits.presence_burst < 1:
        raise ConfigError(f"{source}: [limits] presence_burst must be at least 1")
    if limits.c2s_read_rate > 0 and limits.c2s_read_burst < 1:
        raise ConfigError(f"{source}: [limits] c2s_read_burst must be at least 1")
    for key in ("auth_failure_window", "registration_window"):
        if getattr(limits, key) <= 0:
            raise ConfigError(f"{source}: [limits] {key} must be positive")
    for text in limits.exempt_ips:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f"{source}: [limits] exempt_ips: {text!r} is not an address "
                              "or network") from None
    _check_abuse_limits(config)


def _check_abuse_limits(config: Config) -> None:
    """[limits] keys of issue 13: source prefixes, the listener cap, the login throttle."""
    source, limits = config.source, config.limits
    if not 1 <= limits.ipv4_prefix <= 32:
        raise ConfigError(f"{source}: [limits] ipv4_prefix must be 1 to 32")
    if not 1 <= limits.ipv6_prefix <= 128:
        raise ConfigError(f"{source}: [limits] ipv6_prefix must be 1 to 128")
    if limits.auth_failure_delay_max > config.c2s.pre_auth_timeout:
        raise ConfigError(f"{source}: [limits] auth_failure_delay_max must not exceed "
                          "[c2s] pre_auth_timeout (a login would be cut off while it waits)")
    for key in ("auth_failure_delay_max", "trusted_source_ttl", "roster_size", "offline_queue",
                "pending_subscriptions", "private_keys_per_account",
                "private_bytes_per_account", "blocklist_size", "vcard_size", "presence_rate"):
        if getattr(limits, key) < 0:
            raise ConfigError(f"{source}: [limits] {key} must not be negative")


# SHA-256 of the cluster secrets committed in this repository (config/cluster-3 and
# bench/cluster-3): anyone can read them, so they are for clusters on one machine only.
# tests/test_cli.py checks that every committed *.secret file is listed here.
EXAMPLE_SECRET_DIGESTS = frozenset({
    "9a65c7cef0be6d86f797854ab693c4fad8a8a98a2ad39138a3592d572cd6aa90",
    "323e204b70799b165202af43f98b152611d5e425a8ab330f42d44eceae62a273",
})


def is_example_secret(secret: str) -> bool:
    return hashlib.sha256(secret.encode()).hexdigest() in EXAMPLE_SECRET_DIGESTS


def _check_secret_exposure(config: Config, secret: str | None, read_files: bool) -> None:
    """Refuses a cluster secret that others can read: one published in this repository
    (unless the config opts in, on loopback only) or a secret_file open to every user."""
    source, cluster = config.source, config.cluster
    if secret is not None and is_example_secret(secret):
        if not cluster.allow_example_secret:
            raise ConfigError(
                f"{source}: [cluster] the cluster secret is the public example one from the "
                "raftxmpp repository; make your own (openssl rand -hex 32 > FILE; chmod 600 "
                "FILE), or set allow_example_secret = true for a cluster on this machine only")
        internal = [cluster.raft, cluster.link, *cluster.peers]
        exposed = [str(a) for a in internal if not a.is_loopback]
        if exposed:
            raise ConfigError(
                f"{source}: [cluster] allow_example_secret is for nodes on loopback only, "
                f"and {exposed[0]} is not: make a secret of your own (openssl rand -hex 32)")
        return  # the example's file is world-readable in any checkout
    path = cluster.secret_file
    if read_files and path is not None and path.stat().st_mode & stat.S_IROTH:
        raise ConfigError(f"{source}: [cluster] secret_file {path} is readable by every user "
                          f"of this machine: chmod o-rwx {path}")


def example_secret_warning(config: Config) -> str | None:
    """The CLI's warning for a config that runs on the public example secret."""
    if config.cluster.allow_example_secret:
        secret = config.cluster_secret()
        if secret is not None and is_example_secret(secret):
            return (f"{config.source}: this node uses the public example cluster secret "
                    "(allow_example_secret): fine on one machine, never for a real cluster")
    return None


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def _check_service(config: Config) -> None:
    """[admins] are account JIDs; [contact_addresses] are URIs (XEP-0157 §3)."""
    source = config.source
    for text in config.admins.jids:
        try:
            jid = JID.parse(text)
        except InvalidJID as exc:
            raise ConfigError(f"{source}: [admins] jids: {text!r} is not a JID: {exc}") from None
        if jid.local is None or jid.resource is not None:
            raise ConfigError(f"{source}: [admins] jids: {text!r} is not an account (user@domain)")
    for f in dataclasses.fields(ContactAddressesSection):
        for uri in getattr(config.contact_addresses, f.name):
            if not _URI_SCHEME.match(uri):
                raise ConfigError(f"{source}: [contact_addresses] {f.name}: {uri!r} is not a URI "
                                  "(like xmpp:admin@example.org or mailto:admin@example.org)")


def _check_s2s(config: Config) -> None:
    """[s2s]: timeouts positive, bounds at least 1, domains in the lists valid."""
    source, s2s = config.source, config.s2s
    for key in ("connect_timeout", "auth_timeout", "idle_timeout", "send_timeout"):
        if getattr(s2s, key) <= 0:
            raise ConfigError(f"{source}: [s2s] {key} must be positive")
    for key in ("max_queue", "max_stanza_size", "metrics_domains"):
        if getattr(s2s, key) < 1:
            raise ConfigError(f"{source}: [s2s] {key} must be at least 1")
    if s2s.incoming_rate_per_ip > 0 and s2s.incoming_burst_per_ip < 1:
        raise ConfigError(f"{source}: [s2s] incoming_burst_per_ip must be at least 1")
    for key in ("allow", "deny"):
        for domain in getattr(s2s, key):
            try:
                jid = JID.parse(domain)
            except InvalidJID:
                jid = None
            if jid is None or jid.local is not None or jid.resource is not None:
                raise ConfigError(f"{source}: [s2s] {key}: {domain!r} is not a domain")
    if s2s.enabled and s2s.listen is not None and s2s.listen == s2s.tls_listen:
        raise ConfigError(f"{source}: [s2s] listen and tls_listen must differ")
    if s2s.ca_file is not None and not s2s.ca_file.is_file():
        raise ConfigError(f"{source}: [s2s] ca_file {s2s.ca_file} is not a file")


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _check_pubsub(config: Config) -> None:
    """[pubsub]: a service subdomain made of DNS labels, and limits that fit together."""
    source, pubsub = config.source, config.pubsub
    if pubsub.service and not all(_LABEL.match(label) for label in pubsub.service.split(".")):
        raise ConfigError(f"{source}: [pubsub] service must be a subdomain of DNS labels "
                          f"(like \"pubsub\"), got {pubsub.service!r}")
    if pubsub.node_creation not in ("accounts", "operator"):
        raise ConfigError(f"{source}: [pubsub] node_creation must be accounts or operator")
    for key in ("max_items", "max_item_bytes", "max_avatar_bytes", "max_node_bytes",
                "max_account_bytes", "max_nodes_per_account", "max_service_nodes"):
        if getattr(pubsub, key) < 1:
            raise ConfigError(f"{source}: [pubsub] {key} must be at least 1")
    for key in ("pep_default_max_items", "service_default_max_items"):
        if not 1 <= getattr(pubsub, key) <= pubsub.max_items:
            raise ConfigError(f"{source}: [pubsub] {key} must be from 1 to max_items")
    for key in ("max_item_bytes", "max_avatar_bytes"):
        if getattr(pubsub, key) > min(pubsub.max_node_bytes, pubsub.max_account_bytes):
            raise ConfigError(f"{source}: [pubsub] {key} must not exceed max_node_bytes "
                              "or max_account_bytes")


def _check_muc(config: Config) -> None:
    """[muc]: a service subdomain of DNS labels, positive limits."""
    source, muc = config.source, config.muc
    if muc.service and not all(_LABEL.match(label) for label in muc.service.split(".")):
        raise ConfigError(f"{source}: [muc] service must be a subdomain of DNS labels "
                          f"(like \"conference\"), got {muc.service!r}")
    if muc.room_creation not in ("accounts", "operator"):
        raise ConfigError(f"{source}: [muc] room_creation must be accounts or operator")
    for key in ("max_rooms", "max_rooms_per_owner", "max_occupants", "message_burst"):
        if getattr(muc, key) < 1:
            raise ConfigError(f"{source}: [muc] {key} must be at least 1")
    if muc.history_length < 0 or muc.max_message_rate <= 0:
        raise ConfigError(f"{source}: [muc] history_length must be at least 0 and "
                          "max_message_rate above 0")


def _check_archive(config: Config) -> None:
    """[archive]: a known default, sizes that fit a Raft entry, times not negative."""
    source, archive = config.source, config.archive
    if archive.default not in ("always", "never", "roster"):
        raise ConfigError(f"{source}: [archive] default must be always, never or roster")
    if not 1 <= archive.page_size <= archive.max_page_size:
        raise ConfigError(f"{source}: [archive] page_size must be from 1 to max_page_size")
    if not 1 <= archive.batch_rows <= 2000:
        raise ConfigError(f"{source}: [archive] batch_rows must be from 1 to 2000")
    for key in ("max_per_account", "retention_days"):
        if getattr(archive, key) < 0:
            raise ConfigError(f"{source}: [archive] {key} must not be negative")
    if archive.flush_interval <= 0:
        raise ConfigError(f"{source}: [archive] flush_interval must be positive")


def _check_web(config: Config) -> None:
    """[http] and [upload]: the values raftxmpp.web trusts."""
    source, web, upload = config.source, config.http, config.upload
    for key in ("request_timeout", "keepalive_timeout", "websocket_ping_interval",
                "bosh_max_wait", "bosh_inactivity", "bosh_max_pause"):
        if getattr(web, key) <= 0:
            raise ConfigError(f"{source}: [http] {key} must be positive")
    if web.max_request_head < 1024:
        raise ConfigError(f"{source}: [http] max_request_head must be at least 1024")
    if web.max_connections < 1:
        raise ConfigError(f"{source}: [http] max_connections must be at least 1")
    if web.public_url and not web.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: [http] public_url must start with http:// or https://")
    if web.listen is not None and web.listen == web.tls_listen:
        raise ConfigError(f"{source}: [http] listen and tls_listen must differ")
    if upload.domain.count("{host}") > 1 or not upload.domain.replace("{host}", "x").strip("."):
        raise ConfigError(f"{source}: [upload] domain must be a domain, e.g. upload.{{host}}")
    if upload.max_file_size < 1:
        raise ConfigError(f"{source}: [upload] max_file_size must be at least 1")
    if upload.slot_lifetime <= 0:
        raise ConfigError(f"{source}: [upload] slot_lifetime must be positive")
    if upload.file_lifetime < 0:
        raise ConfigError(f"{source}: [upload] file_lifetime must not be negative")


def _read_secret_file(path: Path, source: str, section: str = "cluster") -> Secret:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{source}: [{section}] secret_file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{source}: [{section}] secret_file {path} is empty")
    return Secret(text)
