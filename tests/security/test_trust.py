"""Trust kept current (runtime/trust.py): certificates vouch for keys, revocations and expiry take
them away, a changed file is re-read, a broken one keeps the previous trust; ZAP asks it too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from xchanged.ca import init_ca, sign_node
from xchanged.config import config_from_dict
from xchanged.protocol import certs, codec
from xchanged.protocol.events import FrameDropped, MessageReceived
from xchanged.protocol.inbound import FrameGate
from xchanged.protocol.messages import Load
from xchanged.protocol.signing import load_private_key, public_bytes
from xchanged.provision import init_node
from xchanged.runtime.curve import curve_public
from xchanged.runtime.trust import UNKNOWN_KEY, Trust


class Host:
    """A node's files: key, node.pub, authorized_keys (own key only)."""

    def __init__(self, base: Path, name: str):
        self.files = init_node(base / name, name, config_text="", force=True)
        self.key = load_private_key(self.files.key_file.read_bytes())
        self.public = public_bytes(self.key)
        self.pub = self.files.directory / "node.pub"


def trust_of(host: Host, **trust) -> Trust:
    config = config_from_dict({"node": {"name": host.files.name}, "trust": trust}, base_dir=host.files.directory)
    return Trust(config.trust, host.public, host.files.name)


def load_frame(key, cert: bytes = b"", seq_ms: int | None = None) -> bytes:
    now = seq_ms or time.time_ns() // 1_000_000
    load = Load(name="x", address="127.0.0.1:1", slots=1, slots_free=1, running=0, queued=0, cpus=1,
                cpu_percent=0.0, mem_total=1, mem_available=1, cert=cert)
    return codec.Encoder(key, public_bytes(key), 1).encode(load, now)


@pytest.fixture
def cluster(tmp_path):
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, "ca")
    a, b = Host(tmp_path, "a"), Host(tmp_path, "b")
    return tmp_path, ca_dir, a, b


def cert_of(ca_dir: Path, host: Host, validity: int = 3600, start: int | None = None) -> bytes:
    cert, path = sign_node(ca_dir, host.pub, None, validity, not_before=start)
    return cert.encode()


def test_a_certificate_makes_its_key_trusted_through_the_gate(cluster):
    _, ca_dir, a, b = cluster
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")])
    assert b.public not in trust.store and trust.zap(curve_public(b.public)) == (True, "")   # a stranger
    gate = FrameGate(trust.store, trust.vouch)
    now = time.time_ns() // 1_000_000
    [dropped] = gate.admit(load_frame(b.key), now)                   # no certificate: untrusted
    assert dropped == FrameDropped(codec.UNTRUSTED)
    [received] = gate.admit(load_frame(b.key, cert_of(ca_dir, b)), now)
    assert isinstance(received, MessageReceived) and b.public in trust.store
    assert trust.key_of(received.envelope.sender) == b.public and trust.is_trusted_curve(curve_public(b.public))
    assert trust.store.certified[b.public] == "b"


def test_without_a_ca_unknown_clients_are_refused_at_zap(cluster):
    _, _, a, b = cluster
    trust = trust_of(a)
    assert trust.zap(curve_public(b.public)) == (False, UNKNOWN_KEY)
    assert trust.zap(curve_public(a.public)) == (True, "")
    gate = FrameGate(trust.store, trust.vouch)
    assert gate.admit(load_frame(b.key, b"anything"), time.time_ns() // 1_000_000) == [FrameDropped(codec.UNTRUSTED)]


@pytest.mark.parametrize("case", ["expired", "foreign", "revoked"])
def test_refused_certificates_are_dropped_by_reason_and_denied_at_zap_after(cluster, case):
    base, ca_dir, a, b = cluster
    revoked = base / "revoked"
    revoked.write_text("")
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")], revoked=str(revoked))
    if case == "expired":
        cert = cert_of(ca_dir, b, validity=10, start=int(time.time()) - 100)
    elif case == "foreign":
        other = base / "other-ca"
        init_ca(other, "other")
        cert = cert_of(other, b)
    else:
        cert = cert_of(ca_dir, b)
        serial = certs.Certificate.decode(cert).serial
        revoked.write_text(f"serial {serial}\n")
        trust.reload_trust()
    reason = {"expired": certs.CERT_EXPIRED, "foreign": certs.FOREIGN_CA, "revoked": certs.REVOKED}[case]
    gate = FrameGate(trust.store, trust.vouch)
    assert gate.admit(load_frame(b.key, cert), time.time_ns() // 1_000_000) == [FrameDropped(reason)]
    assert b.public not in trust.store and trust.zap(curve_public(b.public)) == (False, reason)


def test_a_revocation_list_that_changes_is_honoured_without_a_restart(cluster):
    base, ca_dir, a, b = cluster
    revoked = base / "revoked"
    revoked.write_text("# nothing yet\n")
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")], revoked=str(revoked))
    assert trust.vouch(b.public, cert_of(ca_dir, b), time.time_ns() // 1_000_000) is None
    assert b.public in trust.store
    assert trust.check_files(time.monotonic()) is False                   # nothing changed
    revoked.write_text(f"ed25519 {b.files.public_line.split()[1]}  # stolen\n")
    trust._next_check = 0.0                                             # don't wait CHECK_INTERVAL
    assert trust.check_files(time.monotonic()) is True
    assert b.public not in trust.store and trust.zap(curve_public(b.public)) == (False, certs.REVOKED)


def test_a_broken_file_at_reload_keeps_the_previous_trust(cluster):
    _, _, a, b = cluster
    auth = a.files.authorized_keys
    auth.write_text(a.files.public_line + "\n" + b.files.public_line + "\n")
    trust = trust_of(a)
    assert b.public in trust.store
    auth.write_text("this is not a key line\n")
    assert trust.reload_trust() is False and b.public in trust.store
    auth.write_text(a.files.public_line + "\n")
    assert trust.reload_trust() is True and b.public not in trust.store and a.public in trust.store


def test_an_expired_certificate_stops_being_trusted(cluster):
    _, ca_dir, a, b = cluster
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")])
    cert = cert_of(ca_dir, b, validity=2, start=int(time.time()) - 1)
    assert trust.vouch(b.public, cert, time.time_ns() // 1_000_000) is None
    trust._recheck(time.time() + 5, full=False)                         # as check_files does, later
    assert b.public not in trust.store and trust.zap(curve_public(b.public)) == (False, certs.CERT_EXPIRED)


def test_own_certificate_must_be_for_our_key(cluster):
    from xchanged.runtime.trust import TrustFileError
    _, ca_dir, a, b = cluster
    sign_node(ca_dir, b.pub, None, 3600, out=a.files.directory / "wrong.cert")
    with pytest.raises(TrustFileError, match="not for this node's key"):
        trust_of(a, ca=[str(ca_dir / "ca.pub")], certificate=str(a.files.directory / "wrong.cert"))
    sign_node(ca_dir, a.pub, None, 3600, out=a.files.directory / "node.cert")
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")], certificate=str(a.files.directory / "node.cert"))
    assert certs.Certificate.decode(trust.own_cert).node_key == a.public
    assert os.path.exists(ca_dir / "issued.log")


def test_a_key_revoked_by_key_is_refused_at_zap_even_with_a_ca(cluster):
    base, ca_dir, a, b = cluster
    revoked = base / "revoked"
    revoked.write_text(f"ed25519 {b.files.public_line.split()[1]}\n")
    trust = trust_of(a, ca=[str(ca_dir / "ca.pub")], revoked=str(revoked))
    assert trust.zap(curve_public(b.public)) == (False, certs.REVOKED)       # not admitted as a stranger
    assert trust.vouch(b.public, cert_of(ca_dir, b), time.time_ns() // 1_000_000) == certs.REVOKED


def test_a_config_reload_takes_new_trust_paths_or_leaves_everything_as_it_was(cluster):
    from xchanged.runtime.trust import TrustFileError
    base, ca_dir, a, b = cluster
    trust = trust_of(a)
    assert trust.cas == {}
    good = config_from_dict({"node": {"name": "a"}, "trust": {"ca": [str(ca_dir / "ca.pub")]}},
                            base_dir=a.files.directory).trust
    (base / "broken.pub").write_text("not a key\n")
    bad = config_from_dict({"node": {"name": "a"}, "trust": {"ca": [str(base / "broken.pub")]}},
                           base_dir=a.files.directory).trust
    with pytest.raises(TrustFileError):
        trust.reload_from(bad)
    assert trust.cas == {} and trust.config.ca == ()
    trust.reload_from(good)
    assert len(trust.cas) == 1 and trust.zap(curve_public(b.public)) == (True, "")     # strangers may now come
