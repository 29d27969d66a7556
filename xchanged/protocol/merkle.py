"""Merkle tree hashing as defined in RFC 9162 §2.1 (Certificate Transparency v2).

Why: the audit log signs one tree head now and then instead of every state; Merkle proofs then let
anyone check that a record is in a signed log (inclusion) and that a later signed log extends an
earlier one without rewriting it (consistency), each with O(log n) hashes.

Rules, straight from the RFC:

- A leaf is hashed as SHA-256(0x00 || data), an interior node as SHA-256(0x01 || left || right).
  The different prefixes keep a leaf from ever passing for a node (second-preimage attacks).
- The tree over n > 1 leaves splits at k, the largest power of two smaller than n: the left part is
  the perfect tree over leaves [0, k), the right part the tree over [k, n). The empty tree's hash is
  SHA-256 of nothing.
- Proof lists are ordered bottom-up (the sibling nearest the leaf first), as the RFC's PATH and
  SUBPROOF produce them.

Everything here takes leaf *hashes*, so the caller decides what a leaf is (for the audit log: the
bytes of a record's payload). The module is pure: no I/O, no clocks, no randomness.

An inclusion proof binds a leaf to a *root*, not to a size: the same proof can verify for another
size whose tree has the same shape along that path. Trust (size, root) only as the pair a signed
tree head commits to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleAccumulator",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Bytes in a SHA-256 digest, so in every leaf hash, node hash, root and proof element."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root of a tree with no leaves."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# Root of the leaves [lo, hi) of some tree, hi > lo; lets the proof code serve both plain lists of
# leaf hashes (O(n) per proof) and the accumulator's stored subtrees (O(log² n) per proof).
_SubtreeRoot = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one leaf."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH(D[n]) over the given leaf hashes (EMPTY_ROOT for none)."""
    return MerkleAccumulator(leaf_hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]): the audit path of leaf `index` in the tree of the first `size`."""
    _check_size(size, len(leaf_hashes))
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
    return _path(index, 0, size, _list_subtree_root(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]): shows the first `old_size` leaves are a prefix of `new_size`.

    The RFC defines the proof for 0 < old_size < new_size; for old_size 0 or old_size == new_size
    the proof is empty (verify_consistency then checks the roots alone).
    """
    _check_size(new_size, len(leaf_hashes))
    if not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} is not within 0..{new_size}")
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, 0, new_size, _list_subtree_root(leaf_hashes))


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` show the leaf at `index` is in the tree (`size`, `root`)?"""
    if not 0 <= index < size or not _all_hashes(proof):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does `proof` show tree (old_size, old_root) is a prefix of the new one?

    Outside the RFC's 0 < old_size < new_size: equal sizes are consistent only with an empty proof
    and equal roots; the empty tree only with an empty proof and old_root == EMPTY_ROOT.
    """
    if not 0 <= old_size <= new_size or not _all_hashes(proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a perfect old tree is a node of the new one: implied
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class MerkleAccumulator:
    """A growing Merkle tree: append leaf hashes, get roots and proofs without rehashing it all.

    It keeps every perfect subtree completed so far (about two hashes per leaf, 64 bytes, packed in
    one bytearray per level: a bytes object per hash cost 73 bytes more each), so
    append costs O(1) hashes amortised, the root of the current or any earlier size is O(log n)
    hashes, and a proof O(log² n) at most: the audit log answers proofs for any signed head.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[h][j] is the root of the perfect subtree over leaves [j * 2**h, (j + 1) * 2**h).
        self._levels: list[bytearray] = [bytearray()]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index."""
        if not _is_hash(leaf_hash):
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        index = len(self)
        h = bytes(leaf_hash)
        level = 0
        while True:
            nodes = self._levels[level]
            nodes += h
            if len(nodes) // HASH_SIZE % 2:  # a left child: its parent waits for a right sibling
                return index
            h = node_hash(bytes(nodes[-2 * HASH_SIZE:-HASH_SIZE]), h)
            level += 1
            if level == len(self._levels):
                self._levels.append(bytearray())

    def leaf(self, index: int) -> bytes:
        """The leaf hash at `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"leaf index {index} is outside a tree of {len(self)} leaves")
        return self._node(0, index)

    def _node(self, level: int, j: int) -> bytes:
        return bytes(self._levels[level][j * HASH_SIZE:(j + 1) * HASH_SIZE])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all of them)."""
        size = self._size_or_all(size)
        return self._subtree_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) (size defaults to all leaves)."""
        size = self._size_or_all(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
        return _path(index, 0, size, self._subtree_root)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) (new_size defaults to all leaves); see consistency_proof."""
        new_size = self._size_or_all(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not within 0..{new_size}")
        if old_size in (0, new_size):
            return []
        return _subproof(old_size, 0, new_size, self._subtree_root)

    def _size_or_all(self, size: int | None) -> int:
        if size is None:
            return len(self)
        _check_size(size, len(self))
        return size

    def _subtree_root(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:  # a perfect, aligned subtree: stored
            height = n.bit_length() - 1
            return self._node(height, lo >> height)
        k = _split(n)
        return node_hash(self._subtree_root(lo, lo + k), self._subtree_root(lo + k, hi))


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path(m: int, lo: int, hi: int, subtree_root: _SubtreeRoot) -> list[bytes]:
    """PATH(m, D[lo:hi]), walked top-down and returned bottom-up as the RFC orders it."""
    proof = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            proof.append(subtree_root(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(lo, lo + k))
            lo += k
            m -= k
    proof.reverse()
    return proof


def _subproof(m: int, lo: int, hi: int, subtree_root: _SubtreeRoot) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], true), walked top-down and returned bottom-up."""
    proof = []
    old_tree_is_a_node = True  # the RFC's b: the old tree's root is a node of this subtree
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(subtree_root(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(lo, lo + k))
            lo += k
            m -= k
            old_tree_is_a_node = False
    if not old_tree_is_a_node:
        proof.append(subtree_root(lo, hi))
    proof.reverse()
    return proof


def _list_subtree_root(leaf_hashes: Sequence[bytes]) -> _SubtreeRoot:
    def subtree_root(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hashes[lo]
        k = _split(hi - lo)
        return node_hash(subtree_root(lo, lo + k), subtree_root(lo + k, hi))

    return subtree_root


def _check_size(size: int, available: int) -> None:
    if not 0 <= size <= available:
        raise ValueError(f"tree size {size} is not within 0..{available} leaves")


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _all_hashes(proof: Sequence[bytes]) -> bool:
    return all(_is_hash(p) for p in proof)
