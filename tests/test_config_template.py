"""The schema in config.py is the one description of every key: the generated default config and the
shipped example follow from it, and defaults the protocol core also has come from the core."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from xchanged.config import (
    SECTIONS,
    BiddingConfig,
    ExecutorConfig,
    GossipConfig,
    NodeConfig,
    config_from_dict,
    settings_of,
)
from xchanged.config_template import example_config, render_default_config
from xchanged.protocol.membership import GossipSettings
from xchanged.protocol.node import NodeSettings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "xchanged.example.toml"


def test_example_file_is_what_the_schema_generates():
    assert EXAMPLE.read_text() == example_config(), (
        "config/xchanged.example.toml is stale: regenerate it with "
        "`python -m xchanged.config_template > config/xchanged.example.toml`")


def test_generated_config_has_every_key_under_its_doc(tmp_path):
    lines = render_default_config("n1", tmp_path).splitlines()
    for name, section in SECTIONS.items():
        at = lines.index(f"[{name}]")
        assert lines[at - 1] == f"# {section.__doc__.strip()}"
        for key, s in settings_of(section):
            at = next(i for i in range(at, len(lines)) if lines[i].startswith((f"{key} = ", f"# {key} = ")))
            doc = []
            for line in reversed(lines[:at]):
                if not line.startswith("# ") or re.match(r"# [a-z_]+ = ", line):
                    break                             # the section header or the previous key
                doc.insert(0, line[2:])
            assert " ".join(doc) == s.doc, (name, key)


def test_every_key_loads_back_to_its_default(tmp_path):
    data = tomllib.loads(render_default_config("n1", tmp_path))
    data["node"]["slots"] = NodeConfig().slots           # shown commented: the host's CPU count
    loaded = config_from_dict(data, base_dir=tmp_path, check_files=False)
    defaults = config_from_dict({"node": {"name": "n1"}}, base_dir=tmp_path, check_files=False)
    assert loaded == defaults


@pytest.mark.parametrize("section, key, core, core_key", [
    (GossipConfig, "interval", GossipSettings, "interval"),
    (GossipConfig, "fanout", GossipSettings, "fanout"),
    (GossipConfig, "suspect_after", GossipSettings, "suspect_after"),
    (GossipConfig, "dead_after", GossipSettings, "dead_after"),
    (GossipConfig, "probe_k", GossipSettings, "probe_k"),
    (BiddingConfig, "window", NodeSettings, "bid_window"),
    (BiddingConfig, "award_timeout", NodeSettings, "award_timeout"),
    (BiddingConfig, "max_candidates", NodeSettings, "max_candidates"),
    (BiddingConfig, "overload_cpu_percent", NodeSettings, "overload_cpu_percent"),
    (ExecutorConfig, "heartbeat", NodeSettings, "heartbeat"),
    (NodeConfig, "prefetch", NodeSettings, "prefetch"),
])
def test_defaults_shared_with_the_core_come_from_the_core(section, key, core, core_key):
    core_field = {f.name: f for f in dataclasses.fields(core)}[core_key]
    assert getattr(section(), key) == core_field.default
