"""`xchanged ca init | sign | revoke | show`: files, modes, serials, and errors as exit code 2."""

from __future__ import annotations

import json
import os
import stat

from click.testing import CliRunner

from xchanged.cli import main
from xchanged.protocol.certs import Certificate, Revocations, check, parse_cert_file
from xchanged.protocol.signing import TrustStore


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_init_sign_show_revoke(tmp_path):
    ca, node = tmp_path / "ca", tmp_path / "n1"
    assert run("init", "--dir", str(node), "--name", "n1").exit_code == 0
    result = run("ca", "init", "--dir", str(ca), "--name", "lab")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(ca / "ca.key").st_mode) == 0o600
    assert run("ca", "init", "--dir", str(ca)).exit_code == 2           # never replaced silently
    result = run("ca", "sign", str(node / "node.pub"), "--ca-dir", str(ca), "--expires", "90d", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["name"] == "n1" and doc["serial"] == 1 and doc["not_after"] - doc["not_before"] == 90 * 86400
    blob = parse_cert_file((node / "node.cert").read_text())
    cas = TrustStore.parse((ca / "ca.pub").read_text()).keys
    node_key = next(iter(TrustStore.parse((node / "node.pub").read_text()).keys))
    assert check(blob, node_key, cas, Revocations(), doc["not_before"] + 1000).name == "n1"
    second = run("ca", "sign", str(node / "node.pub"), "--ca-dir", str(ca), "--name", "renamed", "-o",
                 str(tmp_path / "x.cert"), "--json")
    assert json.loads(second.output)["serial"] == 2
    assert Certificate.decode(parse_cert_file((tmp_path / "x.cert").read_text())).name == "renamed"
    shown = run("ca", "show", str(node / "node.cert"))
    assert shown.exit_code == 0 and "node n1" in shown.output and "serial 1" in shown.output
    assert run("ca", "revoke", "--serial", "1", "--list", str(tmp_path / "revoked")).exit_code == 0
    assert run("ca", "revoke", "--key", str(node / "node.pub"), "--list", str(tmp_path / "revoked")).exit_code == 0
    revoked = Revocations.parse((tmp_path / "revoked").read_text())
    assert revoked.serials == {1} and revoked.keys == {node_key}
    assert "serial 2" in (ca / "issued.log").read_text()


def test_errors_exit_2(tmp_path):
    (tmp_path / "pub").write_text("ed25519 AAAA\n")
    assert run("ca", "sign", str(tmp_path / "pub"), "--ca-dir", str(tmp_path)).exit_code == 2
    assert run("ca", "sign", str(tmp_path / "pub"), "--expires", "soon").exit_code == 2
    (tmp_path / "bad.cert").write_text("nothing\n")
    assert run("ca", "show", str(tmp_path / "bad.cert")).exit_code == 2
    assert run("ca", "revoke", "--list", str(tmp_path / "r")).exit_code == 2


def test_config_check_reads_the_ca_files_and_the_certificate(tmp_path):
    ca, node = tmp_path / "ca", tmp_path / "n1"
    run("init", "--dir", str(node), "--name", "n1")
    run("ca", "init", "--dir", str(ca))
    run("ca", "sign", str(node / "node.pub"), "--ca-dir", str(ca))
    conf = node / "xchanged.toml"
    base = conf.read_text()
    conf.write_text(base.replace('ca = []', f'ca = ["{ca / "ca.pub"}"]').replace('certificate = ""',
                                                                                  'certificate = "node.cert"'))
    result = run("config", "check", "-c", str(conf))
    assert result.exit_code == 0 and "1 CA(s), with a certificate" in result.output, result.output
    (node / "node.cert").write_text("xchanged-cert !!!\n")
    result = run("config", "check", "-c", str(conf))
    assert result.exit_code == 2 and "node.cert" in result.output
    conf.write_text(base.replace('run_as = "daemon"', 'run_as = "no-such-user-xc"'))
    result = run("config", "check", "-c", str(conf))
    assert result.exit_code == 2 and "no user 'no-such-user-xc'" in result.output
