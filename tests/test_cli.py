"""CLI contract: init, config check, exit codes when the daemon is down or the input is bad."""

import os
import stat
import subprocess
import sys

from click.testing import CliRunner

from xchanged.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_init_writes_key_files_and_a_config_that_checks(tmp_path):
    result = run("init", "--dir", str(tmp_path / "n1"), "--name", "n1")
    assert result.exit_code == 0, result.output
    d = tmp_path / "n1"
    assert stat.S_IMODE(os.stat(d / "node.key").st_mode) == 0o600
    pub = (d / "node.pub").read_text().strip()
    assert pub.startswith("ed25519 ") and pub in (d / "authorized_keys").read_text()
    check = run("config", "check", "-c", str(d / "xchanged.toml"))
    assert check.exit_code == 0, check.output
    assert "ok" in check.output


def test_init_refuses_to_replace_an_identity(tmp_path):
    assert run("init", "--dir", str(tmp_path), "--name", "a").exit_code == 0
    key = (tmp_path / "node.key").read_bytes()
    again = run("init", "--dir", str(tmp_path), "--name", "a")
    assert again.exit_code == 2 and "refusing" in again.output
    assert (tmp_path / "node.key").read_bytes() == key


def test_config_check_names_file_and_key(tmp_path):
    run("init", "--dir", str(tmp_path), "--name", "a")
    conf = tmp_path / "xchanged.toml"
    conf.write_text('[node]\nname = "a"\n[gossip]\ninterval = "fast"\n')
    result = run("config", "check", "-c", str(conf))
    assert result.exit_code == 2
    assert str(conf) in result.output and "gossip.interval" in result.output


def test_config_check_reports_missing_key_file(tmp_path):
    conf = tmp_path / "x.toml"
    conf.write_text('[node]\nname = "a"\nkey_file = "missing.key"\n')
    result = run("config", "check", "-c", str(conf))
    assert result.exit_code == 2 and "node.key_file" in result.output


def test_config_check_reports_a_broken_authorized_keys_line(tmp_path):
    run("init", "--dir", str(tmp_path), "--name", "a")
    (tmp_path / "authorized_keys").write_text("ed25519 not-base64!!\n")
    result = run("config", "check", "-c", str(tmp_path / "xchanged.toml"))
    assert result.exit_code == 2 and "authorized_keys:1" in result.output


def test_commands_exit_3_naming_the_socket_when_daemon_is_down(tmp_path):
    sock = tmp_path / "nothing.sock"
    conf = tmp_path / "x.toml"
    conf.write_text(f'[node]\nname = "a"\n[network]\ncontrol = "{sock}"\n')
    for args in (["status", "T-X"], ["tasks"], ["peers"], ["stats"], ["submit", "--", "true"]):
        proc = subprocess.run([sys.executable, "-m", "xchanged", args[0], "-c", str(conf), *args[1:]],
                              capture_output=True, text=True)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert str(sock) in proc.stderr


def test_bad_submit_usage_exits_2(tmp_path):
    conf = tmp_path / "x.toml"
    conf.write_text(f'[node]\nname = "a"\n[network]\ncontrol = "{tmp_path / "s.sock"}"\n')
    assert run("submit", "-c", str(conf)).exit_code == 2                      # no command
    assert run("submit", "-c", str(conf), "--label", "novalue", "--", "true").exit_code == 2
    assert run("submit", "-c", str(conf), "--mem", "lots", "--", "true").exit_code == 2


def test_spec_file_errors_are_usage_errors(tmp_path):
    conf = tmp_path / "x.toml"
    conf.write_text(f'[node]\nname = "a"\n[network]\ncontrol = "{tmp_path / "s.sock"}"\n')
    spec = tmp_path / "t.toml"
    spec.write_text("[task]\ncommand = 5\n")
    result = run("submit", "-c", str(conf), "-f", str(spec))
    assert result.exit_code == 2 and "command" in result.output
