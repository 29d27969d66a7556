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
