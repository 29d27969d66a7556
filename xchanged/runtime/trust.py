"""Whom this node trusts, kept current while it runs: authorized_keys, cluster CAs, revocations.

    trust = Trust(config.trust, own_key, own_name)      # reads the files; TrustFileError if one is bad
    trust.store                      # the TrustStore the codec, gate and discovery share (changed in place)
    trust.vouch(key, cert, wall_ms)  # the gate asks: does this certificate make `key` trusted? (None: yes)
    trust.zap(curve_key)             # the ZAP handler asks: may this Curve client connect?
    trust.reload_trust()             # re-read the files now (SIGHUP, and the daemon's mtime check)
    trust.check_files(now)           # reload when a file's mtime changed; drop expired certificates

Rules:
- A key is trusted when it is in authorized_keys (or is our own), or when it presented a certificate
  that `certs.check` accepts (a trusted CA, unexpired, not revoked). A revoked key (revocation list)
  is never trusted, even if authorized_keys lists it.
- Reload re-reads authorized_keys, the CA files and the revocation list; a file that cannot be read
  or parsed at reload keeps the previous trust (logged): a half-written file never opens the cluster
  up or shuts it down. Certified keys are re-checked against the new CAs and revocations at once;
  a certificate past its not_after is dropped within CHECK_INTERVAL.
- ZAP (runtime/zap.py) admits a Curve client whose key belongs to a trusted node. When a CA is
  trusted, an unknown client is admitted as a *stranger* too, or a new host could never present
  its certificate: a stranger's frames share one small rate limit (runtime/inflow.py) and only a
  load carrying a valid certificate is accepted from an unknown key (protocol/inbound.py). A key
  whose certificate was refused (expired, revoked, foreign CA) is remembered and denied at ZAP.
- Trust files are operator files, like authorized_keys: nothing received from the network is
  written to them; certificates learnt from peers live in memory only.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol.certs import (
    CERT_EXPIRED,
    REVOKED,
    CertError,
    Certificate,
    Revocations,
    check,
    parse_cert_file,
)
from ..protocol.signing import TrustError, TrustStore, node_id
from .curve import CurveError, curve_public

if TYPE_CHECKING:
    from ..config import TrustConfig

log = logging.getLogger("xchanged.trust")

CHECK_INTERVAL = 1.0         # seconds between checks of the trust files' mtimes (and of expiries)
EXPIRY_WARNING = 7 * 86400   # warn at start and reload when our certificate expires within this
MAX_REJECTED = 4096          # refused Curve keys remembered (ZAP denies them without a second look)
UNKNOWN_KEY = "unknown_key"  # ZAP denial: no trusted node has this Curve key, and no CA is trusted


class TrustFileError(Exception):
    """A trust file (authorized_keys, a CA file, the revocation list, our certificate) is unusable."""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise TrustFileError(f"{path}: {exc.strerror or exc}") from None


class Trust:
    def __init__(self, config: TrustConfig, own_key: bytes, own_name: str):
        self.config = config
        self.own_key, self.own_name = own_key, own_name
        self.store = TrustStore({})
        self.cas: dict[bytes, str] = {}
        self.revoked = Revocations()
        self.own_cert = b""
        self.certs: dict[bytes, Certificate] = {}              # node key -> the certificate it presented
        self.rejected: OrderedDict[bytes, str] = OrderedDict()  # Curve key -> why it was refused
        self._curve: dict[bytes, bytes] = {}                   # Curve key -> Ed25519 key, trusted ones
        self._ids: dict[str, bytes] = {}                       # node id -> Ed25519 key, trusted ones
        self._revoked_curve: set[bytes] = set()                # Curve keys of revoked node keys
        self._mtimes: dict[Path, tuple[int, int, int] | None] = {}
        self._next_check = 0.0
        self.reloads = 0
        self._load()

    # -- files ----------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        c = self.config
        files = [c.authorized_keys, *c.ca]
        files += [p for p in (c.revoked, c.certificate) if p is not None]
        return files

    def _load(self) -> None:
        """Read every trust file and rebuild the trust; TrustFileError leaves the current one as it was."""
        c = self.config
        mtimes = {path: _mtime(path) for path in self._files()}
        try:
            keys = TrustStore.parse(_read(c.authorized_keys), str(c.authorized_keys)).keys
            cas: dict[bytes, str] = {}
            for path in c.ca:
                cas.update(TrustStore.parse(_read(path), str(path)).keys)
            revoked = Revocations.parse(_read(c.revoked), str(c.revoked)) if c.revoked else Revocations()
            own_cert = parse_cert_file(_read(c.certificate), str(c.certificate)) if c.certificate else b""
        except (TrustError, CertError) as exc:
            raise TrustFileError(str(exc)) from None
        if own_cert and Certificate.decode(own_cert).node_key != self.own_key:
            raise TrustFileError(f"{c.certificate}: the certificate is not for this node's key")
        keys.setdefault(self.own_key, self.own_name)
        for key in revoked.keys:
            keys.pop(key, None)
        self.cas, self.revoked, self.own_cert, self._mtimes = cas, revoked, own_cert, mtimes
        self.store.keys.clear()
        self.store.keys.update(keys)
        self.rejected.clear()
        self._revoked_curve = set()
        for key in revoked.keys:
            try:
                self._revoked_curve.add(curve_public(key))
            except CurveError:
                pass
        self._recheck(time.time(), full=True)
        if own_cert:
            cert = Certificate.decode(own_cert)
            left = cert.not_after - time.time()
            if left < EXPIRY_WARNING:
                log.warning("this node's certificate %s: %s", "has expired" if left < 0 else
                            f"expires in {left / 86400:.1f} days", cert.describe())

    def reload_trust(self) -> bool:
        """Re-read the trust files now (SIGHUP, or one of them changed). True if the new files were
        taken; False (logged) if one was unusable, keeping the trust as it was."""
        try:
            self._load()
        except TrustFileError as exc:
            log.error("trust files not reloaded, keeping the previous trust: %s", exc)
            return False
        self.reloads += 1
        log.info("trust reloaded: %d authorized keys, %d CAs, %d certified peers, %d revocations",
                 len(self.store.keys), len(self.cas), len(self.store.certified),
                 len(self.revoked.serials) + len(self.revoked.keys))
        return True

    def reload_from(self, config: TrustConfig) -> None:
        """Take a new [trust] section (a config reload): its files read and checked now; TrustFileError
        (logged by the caller) leaves the trust and its section as they were."""
        old = self.config
        self.config = config
        try:
            self._load()
        except TrustFileError:
            self.config = old
            raise
        self.reloads += 1
        log.info("trust reloaded: %d authorized keys, %d CAs, %d certified peers, %d revocations",
                 len(self.store.keys), len(self.cas), len(self.store.certified),
                 len(self.revoked.serials) + len(self.revoked.keys))

    def check_files(self, now: float) -> bool:
        """Called often (monotonic `now`): every CHECK_INTERVAL, reload if a trust file's mtime
        changed, and drop certificates that expired. True when the trust files were reloaded."""
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL
        changed = any(_mtime(path) != seen for path, seen in self._mtimes.items())
        if changed:
            return self.reload_trust()
        self._recheck(time.time(), full=False)
        return False

    def _recheck(self, now_s: float, full: bool) -> None:
        """Certified keys checked again: everything (`full`, after the files changed: new CAs,
        revocations), or only their expiry (every CHECK_INTERVAL, cheap); the maps rebuilt."""
        for key, cert in list(self.certs.items()):
            try:
                if full:
                    check(cert.encode(), key, self.cas, self.revoked, now_s)
                elif now_s > cert.not_after:
                    raise CertError(CERT_EXPIRED, f"expired at {cert.not_after}")
            except CertError as exc:
                del self.certs[key]
                self._reject(key, exc.reason)
                log.warning("peer %s (%s) no longer trusted: %s", cert.name, node_id(key), exc)
        self.store.certified.clear()
        self.store.certified.update({key: cert.name for key, cert in self.certs.items()
                                     if key not in self.revoked.keys})
        self._rebuild_maps()

    def _rebuild_maps(self) -> None:
        self._curve, self._ids = {}, {}
        for key in (*self.store.keys, *self.store.certified):
            self._index(key)

    def _index(self, key: bytes) -> None:
        self._ids[node_id(key)] = key
        try:
            self._curve[curve_public(key)] = key
        except CurveError:
            pass

    def _reject(self, key: bytes, reason: str) -> None:
        try:
            curve = curve_public(key)
        except CurveError:
            return
        self.rejected[curve] = reason
        self.rejected.move_to_end(curve)
        while len(self.rejected) > MAX_REJECTED:
            self.rejected.popitem(last=False)

    # -- questions ------------------------------------------------------------------------------

    def vouch(self, key: bytes, cert: bytes, wall_ms: int) -> str | None:
        """Does certificate `cert` make `key` trusted at `wall_ms`? None: yes, and from now on the key
        is trusted (until its certificate expires or is revoked); otherwise the drop reason."""
        if not self.cas:
            return "untrusted"
        try:
            accepted = check(cert, key, self.cas, self.revoked, wall_ms / 1000)
        except CertError as exc:
            self._reject(key, exc.reason)
            return exc.reason
        if key not in self.certs:
            log.info("peer %s (%s) trusted: %s", accepted.name, node_id(key), accepted.describe())
        self.certs[key] = accepted
        self.store.certified[key] = accepted.name
        self._index(key)
        try:
            self.rejected.pop(curve_public(key), None)
        except CurveError:
            pass
        return None

    def zap(self, curve_key: bytes) -> tuple[bool, str]:
        """May a Curve client with this key connect? (allowed, why not: a stable reason label)."""
        why = self.rejected.get(curve_key)
        if why is not None:
            return False, why
        if curve_key in self._revoked_curve:
            return False, REVOKED
        key = self._curve.get(curve_key)
        if key is not None and key in self.store:
            return True, ""
        if self.cas:
            return True, ""                    # a stranger: may present a certificate (module docstring)
        return False, UNKNOWN_KEY

    def is_trusted_curve(self, curve_key: bytes) -> bool:
        key = self._curve.get(curve_key)
        return key is not None and key in self.store

    def key_of(self, nid: str) -> bytes | None:
        """The Ed25519 key of a trusted node, by id."""
        key = self._ids.get(nid)
        return key if key is not None and key in self.store else None

    def key_named(self, name: str) -> bytes | None:
        """The key authorized_keys gives `name` (seeds may name their node so), if exactly one."""
        found = [key for key, n in self.store.keys.items() if n == name]
        return found[0] if len(found) == 1 else None

    def expiring(self, now_s: float, within: float) -> list[Certificate]:
        """Certificates (ours included) that expire within `within` seconds: worth a warning."""
        certs = list(self.certs.values())
        if self.own_cert:
            certs.append(Certificate.decode(self.own_cert))
        return [c for c in certs if now_s + within > c.not_after]

    def summary(self) -> dict:
        """For `stats`: how many keys are trusted and why."""
        return {"authorized_keys": len(self.store.keys), "cas": len(self.cas),
                "certified": len(self.store.certified), "rejected": len(self.rejected),
                "revoked": len(self.revoked.serials) + len(self.revoked.keys), "reloads": self.reloads,
                "own_certificate": Certificate.decode(self.own_cert).describe() if self.own_cert else None}


def _mtime(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: mtime, size and inode (a file replaced by a rename has a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


__all__ = ["Trust", "TrustFileError", "CHECK_INTERVAL", "UNKNOWN_KEY", "CERT_EXPIRED"]
