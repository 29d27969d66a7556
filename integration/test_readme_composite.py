"""The README's composite examples run as written (the spec files in its ```toml blocks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from xchanged.localcluster import LocalCluster

README = Path(__file__).resolve().parents[1] / "README.md"


def spec_files() -> dict[str, str]:
    """Each ```toml block of the README whose first line names a file (`# squares.toml`)."""
    blocks = re.findall(r"```toml\n# (\S+\.toml)\n(.*?)```", README.read_text(), re.S)
    return {name: body for name, body in blocks}


def test_the_readme_composite_examples_run_as_written(tmp_path):
    files = spec_files()
    assert {"squares.toml", "pipeline.toml", "report.toml"} <= files.keys()
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    with LocalCluster([2, 2, 2]) as cluster:
        conf = str(cluster.nodes[0].files.config)

        def xchanged(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "xchanged", args[0], "-c", conf, *args[1:]],
                                  capture_output=True, text=True, timeout=300, cwd=tmp_path)
        squares = xchanged("submit", "-f", "squares.toml", "--wait", "--json")
        assert squares.returncode == 0, squares.stderr
        doc = json.loads(squares.stdout)
        assert doc["state"] == "succeeded" and doc["progress"]["total"] == 101
        assert xchanged("logs", doc["id"]).stdout.strip() == "338350"
        pipeline = xchanged("submit", "-f", "pipeline.toml", "--wait", "--json")
        assert pipeline.returncode == 0, pipeline.stderr
        assert json.loads(pipeline.stdout)["progress"] == {"done": 7, "total": 7, "failed": 0}
