"""CLI of fleet operations without a daemon: exit codes and usage errors of drain, undrain, reload and
`tasks --since/--limit`; how `--since` is read."""

import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from xchanged.cli import main
from xchanged.client import since_ms


def test_operations_exit_3_naming_the_socket_when_the_daemon_is_down(tmp_path):
    sock = tmp_path / "nothing.sock"
    conf = tmp_path / "x.toml"
    conf.write_text(f'[node]\nname = "a"\n[network]\ncontrol = "{sock}"\n')
    for args in (["drain"], ["drain", "--wait"], ["undrain"], ["reload"], ["tasks", "--since", "1h", "--limit", "5"]):
        proc = subprocess.run([sys.executable, "-m", "xchanged", args[0], "-c", str(conf), *args[1:]],
                              capture_output=True, text=True)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert str(sock) in proc.stderr


@pytest.mark.parametrize("args", [["--since", "last tuesday"], ["--limit", "0"], ["--limit", "10001"]])
def test_bad_tasks_options_are_usage_errors(tmp_path, args):
    conf = tmp_path / "x.toml"
    conf.write_text(f'[node]\nname = "a"\n[network]\ncontrol = "{tmp_path / "s.sock"}"\n')
    result = CliRunner().invoke(main, ["tasks", "-c", str(conf), *args])
    assert result.exit_code == 2, result.output


def test_since_reads_durations_times_and_epoch_seconds():
    now = time.time() * 1000
    assert abs(since_ms("1h") - (now - 3_600_000)) < 5_000
    assert abs(since_ms("7d") - (now - 7 * 86_400_000)) < 5_000
    assert since_ms("2026-01-02T03:04:05+00:00") == 1767323045000
    assert since_ms(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == 1767323045000
    assert since_ms(1767323045.5) == 1767323045500
    with pytest.raises(ValueError):
        since_ms("soon")
