"""Node identity and trust: Ed25519 keys, node ids, and the authorized_keys trust store.

A node is its public key. Its id is a short hash of that key, so ids cannot be chosen to collide
with someone else's, and a peer's claimed id is always checked against the key that signed.

authorized_keys holds one trusted key per line: `ed25519 <base64 raw key> [name]`; `#` comments
and blank lines are ignored. node.pub holds the node's own line in the same format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import XchangedError

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
KEY_TYPE = "ed25519"


class TrustError(XchangedError):
    """authorized_keys or a key file is malformed (names the line)."""


def node_id(public_key: bytes) -> str:
    """Short stable id of a node: 'N' + 16 hex digits of SHA-256 of its public key."""
    return "N" + hashlib.sha256(public_key).hexdigest()[:16]


def fingerprint(public_key: bytes) -> str:
    """Operator-facing fingerprint, like ssh-keygen -l: SHA256:<base64, no padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes_raw()


# `cryptography.hazmat.primitives.serialization` (PEM, SSH and every cipher behind them) costs the
# daemon about 2 MiB of resident memory for its whole life, and it needs it only to read its key once.
# So the one encoding `private_key_pem` writes (and `openssl genpkey -algorithm ed25519` too) is read
# here: RFC 8410's PKCS#8 of an Ed25519 key is these 16 bytes then the 32-byte seed. Any other PEM goes
# to the library, which decides what it is (and rejects it, or finds it is not an Ed25519 key).
PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PEM_PRIVATE = (b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----")


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # not at the top: see above
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pkcs8_seed(pem: bytes) -> bytes | None:
    """The seed of a plain PKCS#8 PEM Ed25519 key, or None for anything else."""
    text = pem.strip()
    if not (text.startswith(PEM_PRIVATE[0]) and text.endswith(PEM_PRIVATE[1])):
        return None
    try:
        der = base64.b64decode(b"".join(text[len(PEM_PRIVATE[0]):-len(PEM_PRIVATE[1])].split()), validate=True)
    except binascii.Error:
        return None
    if len(der) != len(PKCS8_ED25519_PREFIX) + 32 or not der.startswith(PKCS8_ED25519_PREFIX):
        return None
    return der[len(PKCS8_ED25519_PREFIX):]


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    seed = _pkcs8_seed(pem)
    if seed is not None:
        return Ed25519PrivateKey.from_private_bytes(seed)
    from cryptography.hazmat.primitives import serialization  # any other PEM: the library's call
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError("the node key must be an Ed25519 key")
    return key


def public_key_line(public_key: bytes, name: str = "") -> str:
    line = f"{KEY_TYPE} {base64.b64encode(public_key).decode()}"
    return f"{line} {name}" if name else line


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class TrustStore:
    """The set of public keys this node accepts frames from, with the names operators gave them:
    `keys` from authorized_keys, `certified` the keys that presented a valid certificate of a trusted
    CA (kept up to date by the driver: added when vouched for, removed on expiry or revocation)."""

    keys: dict[bytes, str]
    certified: dict[bytes, str] = field(default_factory=dict)

    def __contains__(self, public_key: bytes) -> bool:
        return public_key in self.keys or public_key in self.certified

    @classmethod
    def parse(cls, text: str, source: str = "authorized_keys") -> "TrustStore":
        keys: dict[bytes, str] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 2 or parts[0] != KEY_TYPE:
                raise TrustError(f"{source}:{lineno}: expected '{KEY_TYPE} <base64 key> [name]'")
            try:
                key = base64.b64decode(parts[1], validate=True)
            except (binascii.Error, ValueError):
                raise TrustError(f"{source}:{lineno}: key is not valid base64") from None
            if len(key) != PUBLIC_KEY_LEN:
                raise TrustError(f"{source}:{lineno}: an ed25519 key is {PUBLIC_KEY_LEN} bytes, got {len(key)}")
            keys[key] = parts[2].strip() if len(parts) > 2 else ""
        return cls(keys)
