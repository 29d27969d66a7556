"""`xchanged sim`: a small cluster of real protocol cores, end to end through the CLI: the JSON keys
the issue names, nothing lost with crashes, and the same seed giving the same run (in two separate
processes, so hash randomisation cannot hide behind one process's luck)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from xchanged.cli import main

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"messages_per_task", "gossip_bytes_per_node_s", "spread_99_s", "detection_s", "false_positives",
        "response_vs_omniscient", "tasks_lost"}
HOST_DEPENDENT = {"cpu_us_per_event", "host_s", "formation_host_s", "max_rss_mib"}
ARGS = ["sim", "--nodes", "24", "--tasks", "150", "--load", "0.8", "--seed", "5", "--crash-rate", "0.6",
        "--warmup", "4", "--json"]


def run_cli() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="random")
    out = subprocess.run([sys.executable, "-m", "xchanged", *ARGS], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    return json.loads(out.stdout)


def test_sim_reports_the_measures_loses_nothing_with_crashes_and_is_reproducible():
    first = run_cli()
    assert KEYS <= set(first)
    assert first["tasks_lost"] == 0 and first["tasks"] == 150
    assert first["crashes"] >= 1 and first["undetected"] == 0
    assert first["detection_s"] is not None and first["detection_s"] <= 5.0
    assert first["false_positives"] == 0
    assert first["spread_99_s"] is not None
    assert first["response_vs_omniscient"] >= 1.0 or abs(first["response_vs_omniscient"] - 1.0) < 0.05
    second = run_cli()
    assert {k: v for k, v in first.items() if k not in HOST_DEPENDENT} == \
        {k: v for k, v in second.items() if k not in HOST_DEPENDENT}


def test_sim_rejects_bad_arguments_with_usage_errors():
    runner = CliRunner()
    assert runner.invoke(main, ["sim", "--nodes", "1", "--tasks", "5"]).exit_code == 2
    assert runner.invoke(main, ["sim", "--nodes", "5", "--tasks", "5", "--load", "1.5"]).exit_code == 2
    bad = runner.invoke(main, ["sim", "--nodes", "5", "--tasks", "5", "--partition", "x"])
    assert bad.exit_code == 2 and "AT:SECONDS:FRACTION" in bad.output
