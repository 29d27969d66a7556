"""`xchanged audit ...` offline: verify exit codes on intact and tampered copies, show, export, prove."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from xchanged.cli import main
from xchanged.protocol.signing import load_private_key, node_id, public_bytes
from xchanged.provision import init_node
from xchanged.runtime.audit import AuditLog, read_records


@pytest.fixture
def node(tmp_path):
    files = init_node(tmp_path / "n", "alpha", config_text="", force=True)
    state = tmp_path / "n" / "state"
    config = tmp_path / "n" / "xchanged.toml"
    config.write_text(f'[node]\nname = "alpha"\nstate_dir = "{state}"\nkey_file = "{files.key_file}"\n'
                      f'[trust]\nauthorized_keys = "{files.authorized_keys}"\n')
    key = load_private_key(files.key_file.read_bytes())
    nid = node_id(public_bytes(key))
    state.mkdir()
    with AuditLog(state / "audit.log", key, nid) as log:
        for i in range(6):
            log.append({"event": "award" if i % 2 == 0 else "result", "task": f"T-{i // 2}", "attempt": 1,
                        "manager": nid, "contractor": nid, "score": 0.5, "time_ms": 1_700_000_000_000 + i})
        log.sign_head(1_700_000_001_000)
    return {"config": str(config), "log": state / "audit.log", "pub": tmp_path / "n" / "node.pub", "id": nid}


def run(*args):
    return CliRunner().invoke(main, ["audit", *args], catch_exceptions=False)


def test_verify_intact_log_from_config_and_copied_with_key(node, tmp_path):
    result = run("verify", "-c", node["config"])
    assert result.exit_code == 0 and "6 records OK" in result.output
    copy = tmp_path / "copy.log"
    shutil.copy(node["log"], copy)
    shutil.copy(str(node["log"]) + ".head", str(copy) + ".head")
    result = run("verify", str(copy), "--key", str(node["pub"]), "--json")
    assert result.exit_code == 0 and json.loads(result.output)["ok"] is True


def test_verify_names_the_first_bad_entry(node, tmp_path):
    copy = tmp_path / "copy.log"
    data = bytearray(node["log"].read_bytes())
    third = [r.offset for r in read_records(node["log"])][3]
    data[third + 30] ^= 0x01
    copy.write_bytes(bytes(data))
    shutil.copy(str(node["log"]) + ".head", str(copy) + ".head")
    result = CliRunner().invoke(main, ["audit", "verify", str(copy), "--key", str(node["pub"])])
    assert result.exit_code == 1
    assert "record 3" in result.output and "FAILED" in result.output


def test_verify_detects_a_cut_end_and_a_wrong_key(node, tmp_path):
    copy = tmp_path / "copy.log"
    offsets = [r.offset for r in read_records(node["log"])]
    copy.write_bytes(node["log"].read_bytes()[: offsets[5]])
    shutil.copy(str(node["log"]) + ".head", str(copy) + ".head")
    result = CliRunner().invoke(main, ["audit", "verify", str(copy), "--key", str(node["pub"])])
    assert result.exit_code == 1 and "removed" in result.output
    other = init_node(tmp_path / "other", "beta", config_text="", force=True)
    result = CliRunner().invoke(main, ["audit", "verify", str(node["log"]), "--key",
                                       str(tmp_path / "other" / "node.pub")])
    assert result.exit_code == 1, other


def test_verify_usage_errors_exit_2(node, tmp_path):
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "missing.log"), "--key", str(node["pub"])])
    assert result.exit_code == 2 and "no audit log" in result.output
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key\n")
    result = CliRunner().invoke(main, ["audit", "verify", str(node["log"]), "--key", str(bad_key)])
    assert result.exit_code == 2


def test_show_filters_and_export_and_prove(node):
    result = run("show", "-c", node["config"], "--task", "T-1", "--json")
    docs = json.loads(result.output)
    assert result.exit_code == 0 and [d["index"] for d in docs] == [2, 3]
    assert docs[0]["manager_name"] == "alpha"
    assert len(json.loads(run("show", "-c", node["config"], "--node", "alpha", "--json").output)) == 6
    assert json.loads(run("show", "-c", node["config"], "--since", "1700000000004", "--json").output)[0]["index"] == 4
    assert "T-2" in run("show", "-c", node["config"]).output
    lines = run("export", "-c", node["config"]).output.splitlines()
    assert len(lines) == 7 and json.loads(lines[-1])["head"]["size"] == 6
    assert json.loads(lines[0])["entry"]["task"] == "T-0"
    proof = json.loads(run("prove", "-c", node["config"], "4").output)
    assert proof["verified"] is True and proof["tree_size"] == 6 and proof["record"]["index"] == 4
    assert CliRunner().invoke(main, ["audit", "prove", "-c", node["config"], "9"]).exit_code == 1


def test_readers_work_while_a_writer_holds_the_lock(node):
    key = load_private_key((node["pub"].parent / "node.key").read_bytes())
    with AuditLog(node["log"], key, node["id"]) as log:
        log.append({"event": "cancel", "task": "T-9", "manager": node["id"], "time_ms": 1})
        assert run("verify", "-c", node["config"]).exit_code == 0
        assert len(json.loads(run("show", "-c", node["config"], "--json").output)) == 7


def test_the_daemon_refuses_to_start_on_a_damaged_log_and_says_where(node):
    data = bytearray(node["log"].read_bytes())
    second = [r.offset for r in read_records(node["log"])][2]
    data[second + 30] ^= 0x01
    node["log"].write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["run", "-c", node["config"]])
    assert result.exit_code == 1
    assert "refusing to start" in result.output and "record 2" in result.output and str(node["log"]) in result.output


def _append_unsigned(node, n: int) -> list[int]:
    """n more records after the signed head (appended, never covered by a head); their offsets."""
    key = load_private_key(node["pub"].with_name("node.key").read_bytes())
    with AuditLog(node["log"], key, node["id"]) as log:
        for i in range(n):
            log.append({"event": "award", "task": f"T-late-{i}", "attempt": 1, "manager": node["id"],
                        "contractor": node["id"], "time_ms": 1_700_000_002_000 + i})
    return [r.offset for r in read_records(node["log"])]


def test_repair_cuts_a_zero_filled_tail_and_says_what_it_cut(node):
    starts = _append_unsigned(node, 3)                 # records 6, 7, 8: after the head (size 6)
    data = bytearray(node["log"].read_bytes())
    data[starts[7]:starts[8]] = bytes(starts[8] - starts[7])   # record 7 zeroed, record 8 whole after it
    node["log"].write_bytes(bytes(data))
    verify = run("verify", "-c", node["config"])
    assert verify.exit_code == 1 and "audit repair" in verify.output
    result = run("repair", "-c", node["config"])
    assert result.exit_code == 0, result.output
    assert f"cut {len(data) - starts[7]} bytes from byte {starts[7]}" in result.output
    assert "kept 7 records" in result.output and ".cut-" in result.output
    side = list(node["log"].parent.glob("audit.log.cut-*"))
    assert len(side) == 1 and side[0].read_bytes() == bytes(data[starts[7]:])
    assert run("verify", "-c", node["config"]).exit_code == 0
    again = run("repair", "-c", node["config"], "--json")
    assert again.exit_code == 0 and json.loads(again.output)["cut"] is None


def test_repair_refuses_damage_under_the_signed_head(node):
    data = bytearray(node["log"].read_bytes())
    second = [r.offset for r in read_records(node["log"])][2]
    data[second:second + 40] = bytes(40)
    node["log"].write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["audit", "repair", "-c", node["config"]])
    assert result.exit_code == 1 and "Not repaired" in result.output and "signed head covers 6" in result.output
    assert node["log"].read_bytes() == bytes(data)
    assert not list(node["log"].parent.glob("audit.log.cut-*"))


def test_repair_while_the_log_is_open_elsewhere(node):
    key = load_private_key(node["pub"].with_name("node.key").read_bytes())
    with AuditLog(node["log"], key, node["id"]):
        result = CliRunner().invoke(main, ["audit", "repair", "-c", node["config"]])
    assert result.exit_code == 2 and "stop it first" in result.output


def test_the_daemon_cuts_a_zero_filled_tail_and_starts(node, caplog):
    from pathlib import Path

    from xchanged.config import load_config
    from xchanged.runtime.daemon import Daemon

    starts = _append_unsigned(node, 3)
    data = bytearray(node["log"].read_bytes())
    data[starts[6] + 10:starts[6] + 60] = bytes(50)      # record 6, the first after the head, zeroed
    node["log"].write_bytes(bytes(data))
    caplog.set_level("WARNING", logger="xchanged")
    daemon = Daemon(load_config(Path(node["config"])))   # opens (and recovers) the store and the log
    try:
        assert daemon.audit.size == 6 and daemon.audit.cut.first_lost == 6
    finally:
        daemon.audit.close()
        daemon.store.close()
    assert any("recovered from a crash" in r.getMessage() and ".cut-" in r.getMessage() for r in caplog.records)
    assert run("verify", "-c", node["config"]).exit_code == 0
