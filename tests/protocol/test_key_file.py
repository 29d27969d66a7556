"""Reading the node key (protocol/signing.py): the PKCS#8 PEM that `private_key_pem` writes is read
without cryptography's serialization module (idle memory, issue 13); any other PEM goes to the library,
which accepts other valid encodings of an Ed25519 key and rejects the rest as before."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xchanged.protocol.signing import TrustError, _pkcs8_seed, load_private_key, private_key_pem, public_bytes


def test_the_written_key_is_read_back_by_the_short_path_as_the_library_reads_it():
    for _ in range(20):
        key = Ed25519PrivateKey.generate()
        pem = private_key_pem(key)
        assert _pkcs8_seed(pem) == key.private_bytes_raw()
        assert public_bytes(load_private_key(pem)) == public_bytes(key)
        assert public_bytes(load_private_key(b"\n" + pem.replace(b"\n", b"\r\n") + b"\n")) == public_bytes(key)


def test_other_pems_go_to_the_library():
    key = Ed25519PrivateKey.generate()
    traditional = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
    assert _pkcs8_seed(traditional) is None
    with pytest.raises(TrustError, match="not a PEM private key"):
        load_private_key(traditional)                     # as before: an OpenSSH key is not PEM PKCS#8
    x = X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())
    assert _pkcs8_seed(x) is None
    with pytest.raises(TrustError, match="must be an Ed25519 key"):
        load_private_key(x)
    broken = private_key_pem(key).replace(b"MC4C", b"MC4D")
    assert _pkcs8_seed(broken) is None
    with pytest.raises(TrustError):
        load_private_key(broken)
    with pytest.raises(TrustError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n")
