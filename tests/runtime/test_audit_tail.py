"""A crash-damaged audit log tail (runtime/audit_tail.py): cut, zero-filled and torn tails after the
records the signed head covers are recovered at every offset, the cut bytes kept aside; damage the
head covers, or a whole frame with a wrong record, still refuses. `repair()` does the same offline."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runtime.test_audit import KEY, NODE, PUB, award, frame, make_log, offsets
from xchanged.runtime.audit import AuditCorrupted, AuditLocked, AuditLog, read_records, repair, verify_log

N, COVERED = 8, 4          # records in the log; records its signed head covers


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A log of N records whose head covers the first COVERED (the rest: appended, not yet in a head)."""
    path = tmp_path_factory.mktemp("pristine") / "audit.log"
    make_log(path, N, head_at=COVERED)
    return Path(path).read_bytes(), Path(str(path) + ".head").read_bytes(), offsets(path)


def lay_out(directory: Path, name: str, data: bytes, head: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    Path(str(path) + ".head").write_bytes(head)
    return path


def side_files(path: Path) -> list[str]:
    return sorted(glob.glob(f"{path}.cut-*"))


def check_recovered(path: Path, damaged: bytes, whole: int, starts: list[int], reopen: bool = True) -> None:
    """The log keeps its first `whole` records, the rest of `damaged` is in one side file, and the
    log is whole again (verifies, accepts appends)."""
    end = starts[whole] if whole < len(starts) else len(damaged)
    assert Path(path).read_bytes() == damaged[:end]
    (side,) = side_files(path)
    assert Path(side).read_bytes() == damaged[end:]
    report = verify_log(path, PUB)
    assert report.ok and report.size == whole, report.message
    if reopen:
        with AuditLog(path, KEY, NODE) as log:       # whole now: opens without cutting anything
            assert log.cut is None and log.size == whole
            assert log.append(award(100)) == whole
            log.sign_head(1)
        assert verify_log(path, PUB).ok


def whole_before(starts: list[int], at: int) -> int:
    """Records whose frames end at or before byte `at` (frame i spans starts[i]..starts[i+1])."""
    return sum(1 for i in range(len(starts)) if i + 1 < len(starts) and starts[i + 1] <= at)


def test_a_cut_tail_recovers_at_every_offset_after_the_head(pristine, tmp_path):
    data, head, starts = pristine
    starts = starts + [len(data)]
    for i, cut in enumerate(range(starts[COVERED], len(data), 7)):
        path = lay_out(tmp_path / str(i), "audit.log", data[:cut], head)
        with AuditLog(path, KEY, NODE) as log:
            whole = whole_before(starts, cut)
            assert log.size == whole and log.size >= COVERED
            assert log.cut is None or (log.cut.offset, log.cut.first_lost) == (starts[whole], whole)
        if cut in starts:
            assert log.cut is None and not side_files(path)       # whole records only: nothing to cut
        else:
            check_recovered(path, data[:cut], whole, starts)


def first_change(damaged: bytes, original: bytes) -> int | None:
    """The first byte where `damaged` differs from `original` (zeros over a zero change nothing)."""
    return next((i for i in range(len(damaged)) if i >= len(original) or damaged[i] != original[i]), None)


def zeroed(data: bytes, start: int, length: int) -> bytes:
    damaged = bytearray(data) + bytes(max(0, start + length - len(data)))
    damaged[start:start + length] = bytes(length)
    return bytes(damaged)


def test_a_zero_filled_tail_recovers_at_every_offset_after_the_head(pristine, tmp_path):
    """Zeros where appends never landed, with later records after them (some filesystems leave
    exactly that after a crash), or zeros past the end (the file grew, its data never came)."""
    data, head, starts = pristine
    bounds = starts + [len(data)]
    cases = 0
    for start in [*range(bounds[COVERED], len(data), 11), len(data)]:
        for length in (1, 8, 100, 600, 4096):
            damaged = zeroed(data, start, length)
            first = first_change(damaged, data)
            if first is None:
                continue
            cases += 1
            path = lay_out(tmp_path / f"{start}-{length}", "audit.log", damaged, head)
            whole = whole_before(bounds, first)
            with AuditLog(path, KEY, NODE) as log:
                assert log.size == whole >= COVERED
                assert log.cut is not None and log.cut.offset == bounds[whole]
                assert log.cut.length == len(damaged) - bounds[whole]
            check_recovered(path, damaged, whole, bounds, reopen=length == 100)
    assert cases > 100


def test_damage_the_head_covers_still_refuses(pristine, tmp_path):
    data, head, starts = pristine
    covered_end = starts[COVERED]
    for start in range(0, covered_end, 13):
        for damaged in (data[:start],                                         # cut
                        data[:start] + bytes(64) + data[start + 64:],           # zero-filled
                        data[:start] + bytes(len(data) - start)):               # zeroed to the end
            path = lay_out(tmp_path, "audit.log", damaged, head)
            with pytest.raises(AuditCorrupted) as info:
                AuditLog(path, KEY, NODE)
            assert "signed head covers" in info.value.reason
            assert Path(path).read_bytes() == damaged and not side_files(path)   # nothing changed
            with pytest.raises(AuditCorrupted):
                repair(path, PUB)
            assert Path(path).read_bytes() == damaged and not side_files(path)


def test_a_whole_frame_with_a_wrong_record_after_the_head_still_refuses(pristine, tmp_path):
    """Zeros are what a crash leaves; a frame whose CRC checks but whose record is not the next one
    (here: record 6 duplicated in the place of record 5) is written on purpose."""
    data, head, starts = pristine
    bounds = starts + [len(data)]
    damaged = data[:bounds[5]] + data[bounds[6]:bounds[7]] + data[bounds[6]:]
    path = lay_out(tmp_path, "audit.log", damaged, head)
    with pytest.raises(AuditCorrupted) as info:
        AuditLog(path, KEY, NODE)
    assert info.value.index == 5 and "not a crash" in info.value.reason
    assert not side_files(path)
    # the same record with a fixed-up CRC but a broken link
    obj = msgpack.unpackb(data[bounds[5] + 8:bounds[6]], raw=False)
    obj["prev"] = hashlib.sha256(b"x").digest()
    damaged = data[:bounds[5]] + frame(msgpack.packb(obj)) + data[bounds[6]:]
    path = lay_out(tmp_path, "audit.log", damaged, head)
    with pytest.raises(AuditCorrupted):
        repair(path, PUB)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_zeroed_range_recovers_after_the_head_and_refuses_before(pristine, tmp_path, data):
    log_bytes, head, starts = pristine
    start = data.draw(st.integers(0, len(log_bytes) - 1), label="start")
    length = data.draw(st.integers(1, 3000), label="length")
    damaged = zeroed(log_bytes, start, length)
    first = first_change(damaged, log_bytes)
    if first is None:
        return                                   # zeros over zeros: nothing damaged
    for leftover in glob.glob(f"{tmp_path}/h.log*"):
        os.unlink(leftover)
    path = lay_out(tmp_path, "h.log", damaged, head)
    whole = whole_before(starts + [len(log_bytes)], first)
    bounds = starts + [len(log_bytes)]
    if whole < COVERED:
        with pytest.raises(AuditCorrupted):
            AuditLog(path, KEY, NODE)
        assert Path(path).read_bytes() == damaged
        return
    cut = repair(path, PUB)
    assert cut is not None and cut.records_kept == whole and cut.offset == bounds[whole]
    assert [r.index for r in read_records(path)] == list(range(whole))
    assert Path(cut.side_file).read_bytes() == damaged[bounds[whole]:]
    assert verify_log(path, PUB).ok


def test_repair_offline_says_what_it_cut_and_leaves_a_whole_log_alone(pristine, tmp_path):
    data, head, starts = pristine
    damaged = data[:starts[6]] + bytes(300) + data[starts[7]:]
    path = lay_out(tmp_path, "audit.log", damaged, head)
    cut = repair(path, PUB)
    assert (cut.offset, cut.first_lost, cut.records_kept) == (starts[6], 6, 6)
    assert cut.length == len(damaged) - starts[6] and "implausible length 0" in cut.reason
    assert cut.side_file in side_files(path) and "cut " in cut.describe()
    assert repair(path, PUB) is None                         # whole now: nothing more to cut
    assert len(side_files(path)) == 1
    with AuditLog(path, KEY, NODE):
        with pytest.raises(AuditLocked):                     # a running daemon holds it
            repair(path, PUB)
    with pytest.raises(FileNotFoundError):
        repair(tmp_path / "missing.log", PUB)


def test_without_a_head_file_nothing_is_covered(pristine, tmp_path):
    data, _, starts = pristine
    path = tmp_path / "audit.log"
    path.write_bytes(data[:starts[2]] + bytes(50) + data[starts[3]:])
    with AuditLog(path, KEY, NODE) as log:
        assert log.size == 2 and log.cut is not None
    assert Path(side_files(path)[0]).read_bytes() == bytes(50) + data[starts[3]:]
