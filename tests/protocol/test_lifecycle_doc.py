"""docs/protocol.md shows the lifecycle tables the code checks moves against (lifecycle.py)."""

import re
from pathlib import Path

from xchanged.protocol.lifecycle import ATTEMPT_MOVES, TASK_MOVES

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented(heading: str) -> dict[str, set[str]]:
    """The first table after `heading`: state -> the states it may move to."""
    text = DOC.read_text()
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    out: dict[str, set[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        row = re.fullmatch(r"\| `(\w+)` \| (.*?) \|", line)
        if row:
            out[row[1]] = set(re.findall(r"`(\w+)`", row[2]))
    return out


def test_the_task_table_in_the_docs_is_the_code():
    assert documented("Task (`status` shows `state`)") == {str(s): {str(t) for t in to} for s, to in TASK_MOVES.items()}


def test_the_attempt_table_in_the_docs_is_the_code():
    moves = {str(s): {str(t) for t in to} for s, to in ATTEMPT_MOVES.items()}
    assert documented("Attempt (`status` shows each") == moves
