"""Node certificates (protocol/certs.py): what is accepted, and the reason for each refusal."""

from __future__ import annotations

import pytest

from xchanged.protocol import certs
from xchanged.protocol.certs import CertError, Certificate, Revocations, check, issue
from xchanged.protocol.signing import generate_key, public_bytes

NOW = 1_800_000_000


@pytest.fixture
def ca():
    return generate_key()


@pytest.fixture
def node():
    return public_bytes(generate_key())


def cas_of(*keys):
    return {public_bytes(k): "ca" for k in keys}


def test_a_valid_certificate_round_trips_and_is_accepted(ca, node):
    cert = issue(ca, node, "gpu-07", 7, NOW - 10, NOW + 100)
    blob = cert.encode()
    assert len(blob) <= certs.MAX_CERT
    assert Certificate.decode(blob) == cert
    assert check(blob, node, cas_of(ca), Revocations(), NOW) == cert


@pytest.mark.parametrize("now, reason", [(NOW + 101, certs.CERT_EXPIRED), (NOW - 11, certs.CERT_NOT_YET_VALID)])
def test_outside_its_validity_a_certificate_is_refused(ca, node, now, reason):
    blob = issue(ca, node, "n", 1, NOW - 10, NOW + 100).encode()
    with pytest.raises(CertError) as exc:
        check(blob, node, cas_of(ca), Revocations(), now)
    assert exc.value.reason == reason


def test_a_certificate_of_an_untrusted_ca_is_foreign(ca, node):
    blob = issue(generate_key(), node, "n", 1, NOW - 10, NOW + 100).encode()
    with pytest.raises(CertError) as exc:
        check(blob, node, cas_of(ca), Revocations(), NOW)
    assert exc.value.reason == certs.FOREIGN_CA


def test_revoked_by_serial_or_by_key(ca, node):
    blob = issue(ca, node, "n", 5, NOW - 10, NOW + 100).encode()
    for revoked in (Revocations.parse("serial 5\n"), Revocations(keys=frozenset({node}))):
        with pytest.raises(CertError) as exc:
            check(blob, node, cas_of(ca), revoked, NOW)
        assert exc.value.reason == certs.REVOKED
    check(blob, node, cas_of(ca), Revocations.parse("serial 6\n"), NOW)


def test_a_certificate_presented_by_another_key_or_forged_is_bad(ca, node):
    cert = issue(ca, node, "n", 1, NOW - 10, NOW + 100)
    with pytest.raises(CertError) as exc:
        check(cert.encode(), public_bytes(generate_key()), cas_of(ca), Revocations(), NOW)
    assert exc.value.reason == certs.BAD_CERTIFICATE
    longer = Certificate(cert.ca_key, cert.node_key, cert.serial, cert.not_before, cert.not_after + 10**6,
                         cert.name, cert.signature)      # validity stretched, signature kept
    with pytest.raises(CertError) as exc:
        check(longer.encode(), node, cas_of(ca), Revocations(), NOW)
    assert exc.value.reason == certs.BAD_CERTIFICATE


@pytest.mark.parametrize("blob", [b"", b"XCC1", b"XCC2" + bytes(200), bytes(300), b"\xff" * 150])
def test_garbage_is_a_bad_certificate(ca, node, blob):
    with pytest.raises(CertError) as exc:
        check(blob, node, cas_of(ca), Revocations(), NOW)
    assert exc.value.reason == certs.BAD_CERTIFICATE


def test_certificate_file_and_revocation_list_text(ca, node):
    cert = issue(ca, node, "n", 3, NOW - 10, NOW + 100)
    text = certs.cert_file_text(cert)
    assert text.startswith("# xchanged node certificate: node n") and certs.parse_cert_file(text) == cert.encode()
    with pytest.raises(CertError):
        certs.parse_cert_file("# nothing here\n")
    revoked = Revocations.parse("# comment\nserial 3  # lost laptop\n\ned25519 " +
                                __import__("base64").b64encode(node).decode() + " n\n")
    assert revoked.serials == {3} and revoked.keys == {node}
    with pytest.raises(CertError):
        Revocations.parse("serial three\n")
