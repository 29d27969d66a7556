"""CurveZMQ keys derived from the nodes' Ed25519 identities, so a node has one identity, not two.

A node's Curve25519 (X25519) key pair is computed from its Ed25519 node key the way libsodium's
`crypto_sign_ed25519_sk_to_curve25519` / `..._pk_to_curve25519` do:

    secret = clamp(SHA-512(ed25519 seed)[:32])          (what Ed25519 itself uses as its scalar)
    public = u = (1 + y) / (1 - y) mod 2^255 - 19        (the birational map of the Edwards point)

so anyone who knows a node's Ed25519 public key (authorized_keys, a certificate, an mDNS record, the
sender key of a signed frame) knows its Curve public key, and nothing else has to be carried or
signed. The same scalar serves both signatures and Diffie-Hellman; that joint use of an Ed25519 key is
the one libsodium documents and analyses (Degabriele et al., "On the joint security of encryption and
signature in EMV", and the XEdDSA line of work), and it is what tools such as age do with ssh keys.

Curve is hop by hop (it authenticates the connection and encrypts it); the Ed25519 signatures on
every frame stay, because relayed gossip and the audit log need signatures a third party can check.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..protocol.signing import PUBLIC_KEY_LEN

_P = 2**255 - 19


class CurveError(ValueError):
    """An Ed25519 public key that maps to no usable Curve25519 key (not a point of the curve)."""


def curve_public(ed25519_public: bytes) -> bytes:
    """The Curve25519 public key (32 bytes) of a node, from its Ed25519 public key."""
    if len(ed25519_public) != PUBLIC_KEY_LEN:
        raise CurveError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, got {len(ed25519_public)}")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or (1 - y) % _P == 0:
        raise CurveError("not an Ed25519 point with a Curve25519 image")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def curve_secret(key: Ed25519PrivateKey) -> bytes:
    """This node's Curve25519 secret key (32 bytes, clamped) from its Ed25519 private key."""
    seed = key.private_bytes_raw()
    scalar = bytearray(hashlib.sha512(seed).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def curve_keypair(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(public, secret) Curve25519 keys of this node; the public one equals `curve_public` of its
    Ed25519 public key (a test checks it)."""
    secret = curve_secret(key)
    public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    return public, secret
