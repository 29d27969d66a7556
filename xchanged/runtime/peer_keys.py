"""Whom the daemon knows by which key: the trust files (runtime/trust.py) kept current between
reloads, the seeds' keys, and the keys of addresses learnt from loads and mDNS.

Why: the transport dials an address with the node key it expects there (CurveZMQ), so a seed names
its key (KEY@host:port; a key written as a name is looked up in authorized_keys), and the address a
peer's load advertises is remembered with the key that signed it (at most MAX_ADDRESS_KEYS).

Rules: a seed whose key names no one stops a start and rejects a reload (SeedKeyError, turned into
the daemon's error or ConfigRejected). A reload whose trust files cannot be read is rejected, the
trust left as it was; a trust file that changes between reloads is re-read (a bad one logged, the
previous trust kept). When our own certificate changes, the running core is told (CertificateLoaded).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Config, parse_seed
from ..config_check import ConfigRejected
from ..protocol.events import CertificateLoaded
from ..protocol.signing import PUBLIC_KEY_LEN
from .trust import Trust, TrustFileError

log = logging.getLogger("xchanged")
MAX_ADDRESS_KEYS = 65_536      # address -> node key learnt from loads (for seeds and relayed addresses)


class SeedKeyError(ValueError):
    """A seed's key is neither a base64 node key nor the name of exactly one key in authorized_keys."""


class PeerKeys:
    """Keys by address and by name; `put` queues an input for the core, `running` says whether the
    core is up (a certificate change before it is handed over at start instead)."""

    def __init__(self, trusted: Trust, put: Callable[[Any], None], running: Callable[[], bool]) -> None:
        self.trusted = trusted
        self.address_keys: dict[str, bytes] = {}        # peer address -> its node key (seeds, loads)
        self._put = put
        self._running = running

    def learn(self, address: str, key: bytes) -> None:
        if address and self.address_keys.get(address) != key:
            if len(self.address_keys) >= MAX_ADDRESS_KEYS:
                self.address_keys.pop(next(iter(self.address_keys)))
            self.address_keys[address] = key

    def key_for(self, peer: str, address: str) -> bytes | None:
        """The key to dial `address` with: the trusted key of `peer` if known, else the address's."""
        key = self.trusted.key_of(peer) if peer else None
        return key or self.address_keys.get(address)

    def seeds(self, config: Config, learn: bool = True) -> list[tuple[str, bytes | None]]:
        """(address, node key) of each seed of `config`; a key written as a name is looked up in
        authorized_keys; with `learn`, the keys are remembered for sending to those addresses.
        SeedKeyError for a key that names no one."""
        seeds = []
        for seed in config.network.seeds:
            written, address = parse_seed(seed)
            key = None
            if written:
                key = self.trusted.key_named(written)
                if key is None:
                    try:
                        key = base64.b64decode(written, validate=True)
                    except (binascii.Error, ValueError):
                        key = None
                    if key is None or len(key) != PUBLIC_KEY_LEN:
                        raise SeedKeyError(f"network.seeds: {seed!r}: {written!r} is neither a base64 node key nor "
                                           "the name of exactly one key in authorized_keys")
                if learn:
                    self.address_keys[address] = key
            elif not config.network.insecure and learn:
                log.warning("seed %s has no key (KEY@host:port): it can be reached only once its key is learnt "
                            "from other peers", address)
            seeds.append((address, key))
        return seeds

    # -- reload hooks (runtime/operations.py): each given the new config, may reject it ----------

    def trust_hook(self, new: Config) -> None:
        """The new config's trust files, checked and taken, or the whole reload rejected
        (ConfigRejected) with the trust left as it was."""
        before = self.trusted.own_cert
        try:
            self.trusted.reload_from(new.trust)
        except TrustFileError as exc:
            raise ConfigRejected(f"trust: {exc}") from None
        self._after_trust_change(before)

    def seeds_hook(self, new: Config) -> None:
        """Every seed of the new config names a key we can find (else rejected)."""
        try:
            self.seeds(new, learn=False)
        except SeedKeyError as exc:
            raise ConfigRejected(str(exc)) from None

    def check_files(self) -> None:
        """Every second (the daemon's resource loop): reload the trust files if one changed; expire
        certificates."""
        before = self.trusted.own_cert
        if self.trusted.check_files(time.monotonic()):
            self._after_trust_change(before)

    def _after_trust_change(self, own_cert_before: bytes) -> None:
        if self.trusted.own_cert != own_cert_before and self._running():
            self._put(CertificateLoaded(self.trusted.own_cert))
