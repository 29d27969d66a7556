"""Task ids that name their manager, so any node can tell whom to ask about a task.

    T- + base32(tag (5 bytes) + random (10 bytes))    = "T-" + 24 characters

The tag is the first 40 bits of the manager's node id (node ids are 64 bits of the hash of the
node's public key, signing.node_id), so every task a node manages starts with the same 8
characters; the 80 random bits make ids unique as before. A tag is a hint, never trusted: the node
it names is asked over the signed peer protocol, and answers only for tasks it really manages.

Ids without a tag (16 characters: those made before tags, the simulator's) name no manager; a node
asked about one asks all its peers instead (cluster_view.py).
"""

from __future__ import annotations

import base64
import binascii

TAG_BYTES = 5
RANDOM_BYTES = 10
TAGGED_LEN = len("T-") + (TAG_BYTES + RANDOM_BYTES) * 8 // 5      # 26


def tag_of(node_id: str) -> str:
    """The tag of a node id ('N' + 16 hex digits): its first 10 hex digits."""
    return node_id[1:1 + 2 * TAG_BYTES].lower()


def make_task_id(manager_id: str, randomness: bytes) -> str:
    """A new task id naming `manager_id`; `randomness` is RANDOM_BYTES fresh random bytes (the
    driver's: the core has no randomness of its own to spend on ids)."""
    if len(randomness) != RANDOM_BYTES:
        raise ValueError(f"need {RANDOM_BYTES} random bytes")
    return "T-" + base64.b32encode(bytes.fromhex(tag_of(manager_id)) + randomness).decode()


def manager_tag(task_id: str) -> str | None:
    """The tag of the manager a task id names, or None (an id without one, or not an id at all)."""
    if len(task_id) != TAGGED_LEN or not task_id.startswith("T-"):
        return None
    try:
        raw = base64.b32decode(task_id[2:])
    except (binascii.Error, ValueError):
        return None
    return raw[:TAG_BYTES].hex()


def names(task_id: str, node_id: str) -> bool:
    """Whether `task_id` names `node_id` as its manager."""
    return manager_tag(task_id) == tag_of(node_id)
