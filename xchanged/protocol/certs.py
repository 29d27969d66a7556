"""Node certificates of a cluster CA: a small signed document binding a node name to a node key.

Why: with authorized_keys alone, adding a host means editing a file on every host. With a cluster CA,
each node trusts the CA's key once; a new host gets a certificate (`xchanged ca sign`) and joins by
presenting it: nothing changes on the others.

Format (binary, fixed layout, all integers big-endian; the signature covers every byte before it):

    b"XCC1" | CA public key (32) | node public key (32) | serial (u64) | not_before (i64, unix s)
            | not_after (i64, unix s) | name length (u8) | name (UTF-8, <= 63 bytes) | Ed25519 signature (64)

The CA key inside lets a node that trusts several CAs pick the one to check against; a certificate
from a CA it does not trust is `foreign_ca`, whatever its signature. A certificate is accepted for a
node key when: it parses, its CA is trusted, the CA's signature verifies, it names that node key, the
time is within [not_before, not_after], and neither its serial nor the node key is revoked.

A certificate file is text: comment lines (`#`, what the certificate says, for people) and one line
`xchanged-cert <base64>`. A revocation list is text too: `serial N` and `ed25519 <base64 key>` lines
(a node.pub line can be pasted as it is), `#` comments. Everything here is pure: time is passed in.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import XchangedError
from .signing import KEY_TYPE, PUBLIC_KEY_LEN, SIGNATURE_LEN, fingerprint, node_id, public_bytes, sign, verify

MAGIC = b"XCC1"
_FIXED = struct.Struct(">4s32s32sQqqB")
MAX_NAME = 63
MAX_CERT = _FIXED.size + MAX_NAME + SIGNATURE_LEN       # 244 bytes
CERT_LINE = "xchanged-cert"

# Stable reasons a certificate is refused (frame drop and ZAP denial labels).
BAD_CERTIFICATE = "bad_certificate"       # does not parse, bad signature, or names another key
FOREIGN_CA = "foreign_ca"                 # issued by a CA this node does not trust
CERT_EXPIRED = "cert_expired"
CERT_NOT_YET_VALID = "cert_not_yet_valid"
REVOKED = "revoked"
CERT_REASONS = (BAD_CERTIFICATE, FOREIGN_CA, CERT_EXPIRED, CERT_NOT_YET_VALID, REVOKED)


class CertError(XchangedError):
    """A certificate (or a certificate or revocation file) is refused; `reason` is a CERT_REASONS label
    (files: BAD_CERTIFICATE) and the message says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class Certificate:
    ca_key: bytes
    node_key: bytes
    serial: int
    not_before: int          # unix seconds
    not_after: int
    name: str
    signature: bytes = b""

    def body(self) -> bytes:
        name = self.name.encode()
        return _FIXED.pack(MAGIC, self.ca_key, self.node_key, self.serial, self.not_before, self.not_after,
                           len(name)) + name

    def encode(self) -> bytes:
        return self.body() + self.signature

    @property
    def node_id(self) -> str:
        return node_id(self.node_key)

    @classmethod
    def decode(cls, blob: bytes) -> "Certificate":
        """Parse (nothing is checked but the layout); CertError(BAD_CERTIFICATE) otherwise."""
        if not isinstance(blob, bytes) or not _FIXED.size + SIGNATURE_LEN <= len(blob) <= MAX_CERT:
            raise CertError(BAD_CERTIFICATE, "wrong length")
        magic, ca_key, node_key, serial, not_before, not_after, name_len = _FIXED.unpack_from(blob)
        if magic != MAGIC:
            raise CertError(BAD_CERTIFICATE, "not an xchanged certificate")
        if len(blob) != _FIXED.size + name_len + SIGNATURE_LEN or name_len > MAX_NAME:
            raise CertError(BAD_CERTIFICATE, "wrong length")
        try:
            name = blob[_FIXED.size:_FIXED.size + name_len].decode()
        except UnicodeDecodeError:
            raise CertError(BAD_CERTIFICATE, "name is not UTF-8") from None
        return cls(ca_key, node_key, serial, not_before, not_after, name, blob[-SIGNATURE_LEN:])

    def describe(self) -> str:
        """One line for people: who, which key, validity, issuer."""
        return (f"node {self.name} ({self.node_id}), serial {self.serial}, valid {_iso(self.not_before)} to "
                f"{_iso(self.not_after)}, CA {fingerprint(self.ca_key)}")


def _iso(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def issue(ca: Ed25519PrivateKey, node_key: bytes, name: str, serial: int, not_before: int,
          not_after: int) -> Certificate:
    """A certificate for `node_key`, signed by the CA key `ca` (ValueError on bad arguments)."""
    if len(node_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"a node key is {PUBLIC_KEY_LEN} bytes")
    if not name or len(name.encode()) > MAX_NAME:
        raise ValueError(f"a certificate names its node in 1 to {MAX_NAME} bytes")
    if not 0 <= serial < 1 << 64:
        raise ValueError("serial must fit in 64 bits")
    if not_after <= not_before:
        raise ValueError("not_after must be after not_before")
    cert = Certificate(public_bytes(ca), node_key, serial, not_before, not_after, name)
    return Certificate(cert.ca_key, node_key, serial, not_before, not_after, name, sign(ca, cert.body()))


@dataclass(frozen=True, slots=True)
class Revocations:
    """Revoked certificate serials and node keys (either one revokes a certificate)."""

    serials: frozenset[int] = frozenset()
    keys: frozenset[bytes] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.serials or self.keys)

    @classmethod
    def parse(cls, text: str, source: str = "revocation list") -> "Revocations":
        serials: set[int] = set()
        keys: set[bytes] = set()
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if parts[0] == "serial" and len(parts) == 2 and parts[1].isdigit():
                serials.add(int(parts[1]))
            elif parts[0] == KEY_TYPE and len(parts) >= 2:
                keys.add(_key(parts[1], f"{source}:{lineno}"))
            else:
                raise CertError(BAD_CERTIFICATE, f"{source}:{lineno}: expected 'serial N' or '{KEY_TYPE} <base64 key>'")
        return cls(frozenset(serials), frozenset(keys))

    def revokes(self, cert: Certificate) -> bool:
        return cert.serial in self.serials or cert.node_key in self.keys


def _key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CertError(BAD_CERTIFICATE, f"{where}: key is not base64") from None
    if len(key) != PUBLIC_KEY_LEN:
        raise CertError(BAD_CERTIFICATE, f"{where}: an {KEY_TYPE} key is {PUBLIC_KEY_LEN} bytes")
    return key


def check(blob: bytes, node_key: bytes, cas: Mapping[bytes, str], revoked: Revocations, now_s: float) -> Certificate:
    """The certificate in `blob` if it vouches for `node_key` at time `now_s`; CertError(reason) if not.
    Cheap checks first: a foreign or malformed certificate costs no signature verification;
    the signature comes before revocation and time, so what a refusal says is about a real certificate."""
    cert = Certificate.decode(blob)
    if cert.ca_key not in cas:
        raise CertError(FOREIGN_CA, f"issued by {fingerprint(cert.ca_key)}, which is not a trusted CA")
    if cert.node_key != node_key:
        raise CertError(BAD_CERTIFICATE, f"issued to {cert.node_id}, presented by {node_id(node_key)}")
    if not verify(cert.ca_key, cert.signature, cert.body()):
        raise CertError(BAD_CERTIFICATE, "the CA's signature does not verify")
    if revoked.revokes(cert):
        raise CertError(REVOKED, f"certificate serial {cert.serial} of {cert.name} is revoked")
    if now_s < cert.not_before:
        raise CertError(CERT_NOT_YET_VALID, f"valid from {_iso(cert.not_before)}")
    if now_s > cert.not_after:
        raise CertError(CERT_EXPIRED, f"expired {_iso(cert.not_after)}")
    return cert


def cert_file_text(cert: Certificate) -> str:
    """The text of a certificate file: what it says, for people, then the certificate line."""
    return f"# xchanged node certificate: {cert.describe()}\n{CERT_LINE} {base64.b64encode(cert.encode()).decode()}\n"


def parse_cert_file(text: str, source: str = "certificate") -> bytes:
    """The certificate bytes of a certificate file (CertError(BAD_CERTIFICATE) if it has none)."""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(CERT_LINE + " "):
            try:
                blob = base64.b64decode(line[len(CERT_LINE):].strip(), validate=True)
            except (binascii.Error, ValueError):
                raise CertError(BAD_CERTIFICATE, f"{source}: not base64") from None
            Certificate.decode(blob)
            return blob
    raise CertError(BAD_CERTIFICATE, f"{source}: no '{CERT_LINE}' line")
