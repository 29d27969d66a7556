"""mDNS discovery: announce this node as `_xchanged._tcp.local.` and browse for the others.

    discovery = Discovery(node_id, public_key, name, address, interface_ip, trust, on_peer)
    await discovery.start()      # binds sockets; registration and browsing go on in the background
    ...
    await discovery.close()      # goodbye packets, sockets closed (bounded in time)

What is announced (TXT record, each entry short): the node id, the key fingerprint (as
`signing.fingerprint`), the protocol (codec) version, the base64 public key and the node name, and the
node's CA certificate if it has one (base64, split over `c0`, `c1`: a TXT string holds 255 bytes); the
service's A record and port are the advertised peer address.

What is done with what others announce (attacker-influenced input, so checked and bounded):
- A record that is malformed (no key, key not 32 bytes, id not the key's id, other protocol version)
  is ignored, with a rate-limited warning.
- A service whose key is not trusted but whose certificate `vouch` accepts (a trusted cluster CA) is
  trusted from then on, as if it had presented the certificate in a frame.
- A service whose key is in the trust store becomes `on_peer(address, public_key)`; the daemon turns
  it into a `SeedConfigured(address, public_key, source="mdns")` for the core, which sends it our
  load, and drops that node's previously discovered address (it moved). mDNS tells us only where to
  knock: everything learnt about the peer afterwards comes from its signed frames.
- We announce an IPv4 address (an A record) even when we advertise a host name or an IPv6 address:
  the name's IPv4 address, else our interface's (`ipv4_for`).
- A service whose key is not trusted is remembered (at most `MAX_UNTRUSTED`) so `xchanged peers
  --all` can show it as `untrusted`; it is never used, and frames signed by its key are dropped by
  the codec anyway.

Nothing here blocks the daemon's loop: python-zeroconf runs on the same asyncio loop, and service
resolution is a background task per announcement. zeroconf itself is imported only by `start()` and
the callbacks it sets up: a node with `[network] mdns = false` never loads it (memory: docs/operations.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import psutil

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..protocol import codec
from ..protocol.signing import PUBLIC_KEY_LEN, TrustStore, fingerprint, node_id
from ..units import parse_host_port

log = logging.getLogger("xchanged.discovery")

SERVICE_TYPE = "_xchanged._tcp.local."
MAX_UNTRUSTED = 256            # untrusted services remembered for `peers --all`
MAX_RESOLVING = 64             # concurrent service resolutions
RESOLVE_TIMEOUT_MS = 3000
CLOSE_TIMEOUT = 3.0            # seconds allowed for goodbye packets at shutdown
WARN_INTERVAL = 60.0           # at most one warning per minute about bad announcements
_INSTANCE_BAD = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(slots=True)
class Untrusted:
    """An announced service whose key is not in our trust store."""

    id: str
    name: str
    address: str
    fingerprint: str
    last_seen: float             # monotonic
    service: str = ""            # the mDNS instance name it was announced under


CERT_CHUNK = 200               # base64 characters of the certificate per TXT string


def txt_properties(nid: str, public_key: bytes, name: str, cert: bytes = b"") -> dict[str, str]:
    props = {"id": nid, "fp": fingerprint(public_key), "v": str(codec.VERSION),
             "pk": base64.b64encode(public_key).decode(), "name": name[:64]}
    text = base64.b64encode(cert).decode()
    for i in range(0, len(text), CERT_CHUNK):
        props[f"c{i // CERT_CHUNK}"] = text[i:i + CERT_CHUNK]
    return props


def announced_cert(props: dict) -> bytes:
    """The certificate a TXT record carries (b"" if none or unreadable: it is checked by the caller)."""
    parts = []
    for i in range(4):
        value = props.get(f"c{i}".encode(), props.get(f"c{i}"))
        if not value:
            break
        parts.append(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
    try:
        return base64.b64decode("".join(parts), validate=True)
    except (binascii.Error, ValueError):
        return b""


def instance_name(name: str, nid: str) -> str:
    """The service instance label: '<name>-<node id>', at most 63 bytes, safe characters only."""
    safe = _INSTANCE_BAD.sub("-", name)[: 63 - len(nid) - 1] or "node"
    return f"{safe}-{nid}"


def parse_announcement(props: dict) -> tuple[str, bytes, str]:
    """(node id, public key, name) from a TXT record; ValueError says what is wrong with it."""
    def text(key: str) -> str:
        value = props.get(key.encode(), props.get(key))
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value or ""

    if text("v") != str(codec.VERSION):
        raise ValueError(f"protocol version {text('v')!r}, we speak {codec.VERSION}")
    try:
        key = base64.b64decode(text("pk"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not base64") from None
    if len(key) != PUBLIC_KEY_LEN:
        raise ValueError(f"public key of {len(key)} bytes")
    if text("id") != node_id(key):
        raise ValueError("node id does not match the public key")
    return node_id(key), key, text("name")[:64]


class Discovery:
    def __init__(self, nid: str, public_key: bytes, name: str, address: str, interface_ip: str | None,
                 trust: TrustStore, on_peer: Callable[[str, bytes], None], cert: bytes = b"",
                 vouch: Callable[[bytes, bytes, int], str | None] | None = None):
        """`address`: our advertised host:port; `interface_ip`: bind mDNS to this IPv4 address only
        (None: all interfaces); `cert`: our CA certificate, announced; `vouch`: checks a certificate
        others announce (Trust.vouch)."""
        self.cert, self.vouch = cert, vouch
        self.id = nid
        self.public_key = public_key
        self.name = name
        self.address = address
        self.interface_ip = interface_ip
        self.trust = trust
        self.on_peer = on_peer
        self.untrusted: dict[str, Untrusted] = {}
        self.discovered: dict[str, float] = {}         # trusted node id -> monotonic first seen
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task] = set()
        self._resolving: set[str] = set()
        self._last_warning = float("-inf")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the mDNS sockets and start announcing and browsing (both go on in the background)."""
        from zeroconf import InterfaceChoice, IPVersion  # here: a node with mDNS off never loads it
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        host, port = parse_host_port(self.address)
        ip = await asyncio.to_thread(ipv4_for, host, self.interface_ip)      # a host name may need DNS
        interfaces = [self.interface_ip] if self.interface_ip else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE, f"{instance_name(self.name, self.id)}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(ip)], port=port,
            properties=txt_properties(self.id, self.public_key, self.name, self.cert),
            server=f"xc-{self.id.lower()}.local.")
        self._spawn(self._register())
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])
        log.info("mDNS: announcing %s at %s:%s (advertised %s) on %s", SERVICE_TYPE, ip, port, self.address,
                 self.interface_ip or "all interfaces")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._zc is None:
            return
        zc, self._zc = self._zc, None
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            await asyncio.wait_for(zc.async_close(), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, OSError, RuntimeError) as exc:
            log.warning("mDNS shutdown: %s", exc)
            zc.zeroconf.close()

    async def _register(self) -> None:
        try:
            done = await self._zc.async_register_service(self._info, allow_name_change=True)
            await done
            log.info("mDNS: registered %s", self._info.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a name clash or a socket error must not take the daemon down
            log.warning("mDNS registration failed: %s", exc)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- browsing -------------------------------------------------------------------------------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            for key, entry in list(self.untrusted.items()):
                if entry.service == name:
                    del self.untrusted[key]
            return
        if name in self._resolving or len(self._resolving) >= MAX_RESOLVING:
            return
        self._resolving.add(name)
        self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            info = AsyncServiceInfo(service_type, name)
            if self._zc is None or not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            self.on_service(info.properties or {}, info.parsed_addresses(IPVersion.V4Only), info.port,
                            service=name)
        finally:
            self._resolving.discard(name)

    def on_service(self, props: dict, addresses: list[str], port: int | None, now: float | None = None,
                   service: str = "") -> None:
        """One resolved announcement (separate from zeroconf so it can be tested alone)."""
        now = time.monotonic() if now is None else now
        try:
            nid, key, name = parse_announcement(props)
            if not addresses or not port:
                raise ValueError("no IPv4 address or port")
            ip = str(ipaddress.IPv4Address(addresses[0]))
        except ValueError as exc:
            self._warn(f"ignoring a malformed {SERVICE_TYPE} announcement: {exc}")
            return
        if key == self.public_key:
            return
        address = f"{ip}:{port}"
        cert = announced_cert(props) if key not in self.trust and self.vouch is not None else b""
        if cert and self.vouch is not None:
            self.vouch(key, cert, time.time_ns() // 1_000_000)
        if key not in self.trust:
            if nid not in self.untrusted and len(self.untrusted) >= MAX_UNTRUSTED:
                oldest = min(self.untrusted.values(), key=lambda u: u.last_seen)
                del self.untrusted[oldest.id]
            self.untrusted[nid] = Untrusted(nid, name, address, fingerprint(key), now, service)
            return
        self.discovered.setdefault(nid, now)
        self.on_peer(address, key)

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL:
            self._last_warning = now
            log.warning("%s", text)
        else:
            log.debug("%s", text)

    # -- views ----------------------------------------------------------------------------------

    def untrusted_docs(self, now: float) -> list[dict]:
        """`peers --all` rows for the untrusted services (same keys as the trusted peers' rows)."""
        return [{"id": u.id, "name": u.name, "address": u.address, "health": "untrusted",
                 "last_seen_s": round(now - u.last_seen, 3), "slots": 0, "slots_free": 0, "running": 0,
                 "queued": 0, "cpus": 0, "cpu_percent": 0.0, "mem_total": 0, "mem_available": 0, "gpus": [],
                 "labels": {}, "utilisation": 0.0, "fingerprint": u.fingerprint, "self": False}
                for u in sorted(self.untrusted.values(), key=lambda u: (u.name, u.id))]


def ipv4_for(host: str, interface: str | None) -> str:
    """The IPv4 address mDNS announces for our advertised `host` (mDNS only says where to knock; our
    signed loads say where we are): the host itself if it is one, else what the name resolves to,
    else the interface mDNS is bound to, else the first non-loopback IPv4 address. An advertised
    host name or IPv6 address therefore never turns mDNS off."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    if infos:
        return str(infos[0][4][0])
    return interface or first_ipv4()


def first_ipv4() -> str:
    """The first non-loopback IPv4 address of this host's interfaces, else 127.0.0.1."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return str(addr.address)
    return "127.0.0.1"


def interface_ip(listen: str) -> str | None:
    """The IPv4 address mDNS binds to: the specific listen address, else None (all interfaces)."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != 4 or ip.is_unspecified:
        return None
    return str(ip)
