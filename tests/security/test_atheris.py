"""Coverage-guided fuzzing of the frame gate (atheris_frames.py), when atheris is installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (optional: pip install atheris)")

HARNESS = Path(__file__).with_name("atheris_frames.py")
RUNS = 20_000


def test_the_frame_gate_survives_coverage_guided_fuzzing(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = subprocess.run([sys.executable, str(HARNESS), f"-runs={RUNS}", "-max_len=2048",
                             f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=600,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
