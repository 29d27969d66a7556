"""Every example in config/ passes `xchanged config check` (next to a node key and authorized_keys,
as `xchanged init` leaves them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from xchanged.cli import main
from xchanged.provision import init_node

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "config").glob("*.toml"))


def test_the_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"plain-host.toml", "gpu-host.toml", "seed-only.toml",
                                          "xchanged.example.toml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_config_check_passes(tmp_path, example):
    init_node(tmp_path, "host", config_text="", force=True)
    config = tmp_path / "xchanged.toml"
    text = example.read_text()
    if example.name == "xchanged.example.toml":      # it names /etc/xchanged: point it here
        text = text.replace("/etc/xchanged/", f"{tmp_path}/")
    config.write_text(text)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert ": ok (node " in result.output
