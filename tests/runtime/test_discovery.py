"""mDNS announcements: what we publish, and how others' announcements are checked (no sockets)."""

from __future__ import annotations

from xchanged.protocol.signing import TrustStore, fingerprint, generate_key, node_id, public_bytes
from xchanged.runtime.discovery import (
    Discovery,
    first_ipv4,
    instance_name,
    interface_ip,
    ipv4_for,
    parse_announcement,
    txt_properties,
)


def ident():
    pub = public_bytes(generate_key())
    return node_id(pub), pub


def discovery(trusted):
    nid, pub = ident()
    seen = []
    d = Discovery(nid, pub, "me", "10.0.0.1:7946", "10.0.0.1", TrustStore({k: "" for k in [pub, *trusted]}),
                  lambda address, key: seen.append((address, key)))
    return d, seen, pub


def props(nid, pub, name="peer"):
    return {k.encode(): v.encode() for k, v in txt_properties(nid, pub, name).items()}


def test_txt_round_trip_and_instance_names():
    nid, pub = ident()
    assert parse_announcement(props(nid, pub)) == (nid, pub, "peer")
    assert props(nid, pub)[b"fp"] == fingerprint(pub).encode()
    name = instance_name("a.b c" * 30, nid)
    assert len(name) <= 63 and name.endswith(nid) and "." not in name


def test_trusted_service_becomes_a_seed_untrusted_is_only_listed():
    friend, stranger = ident(), ident()
    d, seen, own = discovery([friend[1]])
    d.on_service(props(*friend), ["10.0.0.2"], 7946, now=1.0)
    d.on_service(props(*stranger, name="evil"), ["10.0.0.3"], 7946, now=1.0, service="evil._xchanged._tcp.local.")
    d.on_service(props(node_id(own), own), ["10.0.0.1"], 7946, now=1.0)            # ourselves
    assert seen == [("10.0.0.2:7946", friend[1])]
    [doc] = d.untrusted_docs(3.0)
    assert doc["health"] == "untrusted" and doc["id"] == stranger[0] and doc["address"] == "10.0.0.3:7946"
    assert doc["last_seen_s"] == 2.0 and doc["fingerprint"] == fingerprint(stranger[1])


def test_malformed_announcements_are_ignored():
    nid, pub = ident()
    d, seen, _ = discovery([pub])
    bad = [{**props(nid, pub), b"id": b"N0000000000000000"}, {**props(nid, pub), b"v": b"99"},
           {**props(nid, pub), b"pk": b"!!"}, {b"id": nid.encode()}]
    for p in bad:
        d.on_service(p, ["10.0.0.2"], 7946)
    d.on_service(props(nid, pub), [], 7946)
    assert seen == [] and d.untrusted == {}


def test_interface_is_the_specific_listen_address_only():
    assert interface_ip("10.201.1.2:7946") == "10.201.1.2"
    assert interface_ip("0.0.0.0:7946") is None
    assert interface_ip("[::]:7946") is None
    assert interface_ip("myhost:7946") is None


def test_the_announced_ipv4_follows_an_advertised_name_or_falls_back():
    """An advertised host name or IPv6 address never turns mDNS off: it announces an IPv4 address."""
    assert ipv4_for("10.1.2.3", None) == "10.1.2.3"
    assert ipv4_for("localhost", None) == "127.0.0.1"                    # what the name resolves to
    assert ipv4_for("fd00::5", "10.9.9.9") == "10.9.9.9"                 # the interface mDNS binds to
    assert ipv4_for("no-such-host.invalid", None) == first_ipv4()
