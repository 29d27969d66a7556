"""Merkle hashing checked against a naive transcription of RFC 9162 §2.1 (MTH, PATH, SUBPROOF)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xchanged.protocol import merkle
from xchanged.protocol.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# --- the RFC, written as literally as possible (over leaf *data*, recursive, slow) ------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(n)
    return _sha256(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def proof(m: int, d: list[bytes]) -> list[bytes]:
    return subproof(m, d, True)


def data(n: int) -> list[bytes]:
    """Distinct leaf data, so no two leaves (or subtrees over different ranges) hash alike."""
    return [b"leaf-%d" % i for i in range(n)]


# --- exhaustive comparison for small trees ------------------------------------------------------


def test_hash_prefixes_follow_the_rfc():
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha256(b"\x01" + b"L" * 32 + b"R" * 32)
    assert merkle.root([]) == EMPTY_ROOT == _sha256(b"")


@pytest.mark.parametrize("n", range(1, 71))
def test_root_and_proofs_match_the_rfc_definitions(n):
    d = data(n)
    hashes = [leaf_hash(x) for x in d]
    r = mth(d)
    assert merkle.root(hashes) == r
    for m in range(n):
        p = inclusion_proof(hashes, m, n)
        assert p == path(m, d)
        assert verify_inclusion(hashes[m], m, n, p, r)
    for m in range(1, n):
        p = consistency_proof(hashes, m, n)
        assert p == proof(m, d)
        assert verify_consistency(m, n, mth(d[:m]), r, p)


def test_accumulator_equals_the_naive_root_at_every_size():
    d = data(70)
    acc = MerkleAccumulator()
    assert acc.root() == EMPTY_ROOT
    for n, x in enumerate(d, start=1):
        assert acc.append(leaf_hash(x)) == n - 1
        assert acc.size == len(acc) == n
        assert acc.root() == mth(d[:n])
    for n in range(71):
        assert acc.root(n) == mth(d[:n])


def test_edge_cases_outside_the_rfcs_ranges():
    hashes = [leaf_hash(x) for x in data(5)]
    r = merkle.root(hashes)
    assert consistency_proof(hashes, 5, 5) == []
    assert consistency_proof(hashes, 0, 5) == []
    assert verify_consistency(5, 5, r, r, [])
    assert not verify_consistency(5, 5, r, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, r, [])
    assert not verify_consistency(0, 5, r, r, [])
    assert not verify_consistency(4, 3, r, r, [r])
    assert not verify_inclusion(hashes[0], 5, 5, [], r)
    assert not verify_inclusion(hashes[0], -1, 5, [], r)
    assert not verify_inclusion(hashes[0], 0, 5, [b"short"], r)
    with pytest.raises(ValueError):
        inclusion_proof(hashes, 5, 5)
    with pytest.raises(ValueError):
        inclusion_proof(hashes, 0, 6)
    with pytest.raises(ValueError):
        consistency_proof(hashes, 4, 3)
    with pytest.raises(ValueError):
        MerkleAccumulator().append(b"not 32 bytes")


# --- properties over larger trees ---------------------------------------------------------------

SIZES = st.integers(min_value=1, max_value=300)


@st.composite
def trees(draw):
    n = draw(SIZES)
    return n, [leaf_hash(x) for x in data(n)]


def altered(draw, proof: list[bytes], kind: str) -> list[bytes]:
    """`proof` with one bit of one hash flipped ("flip"), one hash dropped ("drop"), or otherwise (and
    always for an empty proof) a random hash inserted."""
    bad = list(proof)
    if kind == "flip" and bad:
        j = draw.draw(st.integers(0, len(bad) - 1))
        byte = draw.draw(st.integers(0, 31))
        bit = draw.draw(st.integers(1, 255))
        bad[j] = bad[j][:byte] + bytes([bad[j][byte] ^ bit]) + bad[j][byte + 1 :]
    elif kind == "drop" and bad:
        del bad[draw.draw(st.integers(0, len(bad) - 1))]
    else:
        bad.insert(draw.draw(st.integers(0, len(bad))), draw.draw(st.binary(min_size=32, max_size=32)))
    return bad


@settings(max_examples=200, deadline=None)
@given(trees(), st.data())
def test_honest_inclusion_proofs_verify_and_altered_ones_fail(tree, draw):
    n, hashes = tree
    acc = MerkleAccumulator(hashes)
    r = acc.root()
    m = draw.draw(st.integers(0, n - 1), label="index")
    p = inclusion_proof(hashes, m, n)
    assert acc.inclusion_proof(m) == p
    assert verify_inclusion(hashes[m], m, n, p, r)

    kind = draw.draw(st.sampled_from(["flip", "drop", "extra", "index", "size", "leaf"]))
    leaf, index, size, root, bad = hashes[m], m, n, r, list(p)
    if kind == "index" and n > 1:
        index = draw.draw(st.integers(0, n - 1).filter(lambda i: i != m))
    elif kind == "size":
        # The claim "leaf m is in the tree of size s'": s' paired with that tree's real root.
        size = draw.draw(st.integers(m + 1, n + 5).filter(lambda s: s != n))
        root = merkle.root([leaf_hash(x) for x in data(size)])
    elif kind == "leaf":
        leaf = leaf_hash(b"forged")
    else:
        bad = altered(draw, p, kind)
    assert not verify_inclusion(leaf, index, size, bad, root)


@settings(max_examples=200, deadline=None)
@given(trees(), st.data())
def test_honest_consistency_proofs_verify_and_altered_ones_fail(tree, draw):
    n, hashes = tree
    acc = MerkleAccumulator(hashes)
    old = draw.draw(st.integers(0, n), label="old size")
    p = consistency_proof(hashes, old, n)
    assert acc.consistency_proof(old) == p
    old_root, new_root = acc.root(old), acc.root()
    assert verify_consistency(old, n, old_root, new_root, p)

    kind = draw.draw(st.sampled_from(["flip", "drop", "extra", "old", "new", "root"]))
    old_size, new_size, bad = old, n, list(p)
    if kind == "old" and n > 1:
        old_size = draw.draw(st.integers(0, n).filter(lambda s: s != old))
        old_root = acc.root(old_size)
    elif kind == "new":
        new_size = draw.draw(st.integers(old, n + 5).filter(lambda s: s != n))
        new_root = merkle.root([leaf_hash(x) for x in data(new_size)])
    elif kind == "root":
        old_root = leaf_hash(b"another history")
    else:
        bad = altered(draw, p, kind)
    if (old_size, new_size) != (old, n) and bad == consistency_proof(
        [leaf_hash(x) for x in data(max(new_size, n))], old_size, new_size
    ):
        return  # the altered claim happens to have this very proof (both empty): it is honest
    assert not verify_consistency(old_size, new_size, old_root, new_root, bad)


@settings(max_examples=50, deadline=None)
@given(trees())
def test_accumulator_serves_proofs_for_every_earlier_size(tree):
    n, hashes = tree
    acc = MerkleAccumulator(hashes)
    for size in {1, n // 2 or 1, n}:
        r = acc.root(size)
        assert r == merkle.root(hashes[:size])
        for m in {0, size // 3, size - 1}:
            assert acc.inclusion_proof(m, size) == inclusion_proof(hashes, m, size)
            assert verify_inclusion(hashes[m], m, size, acc.inclusion_proof(m, size), r)
