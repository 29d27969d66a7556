"""Per-peer limits before the gate (runtime/inflow.py): rates, bounded queues, peers served in turn."""

from xchanged.runtime.inflow import QUEUE_FULL, RATE_LIMITED, STRANGER, Inflow


def test_a_flooding_peer_is_rate_limited_and_the_others_are_not():
    inflow = Inflow(rate=100, burst=10, queue=1000, stranger_rate=5)
    now = 0.0
    results = [inflow.offer("flood", b"x", now) for _ in range(50)]
    assert results.count(None) == 10 and results.count(RATE_LIMITED) == 40
    assert inflow.offer("calm", b"y", now) is None
    now += 0.1                                            # 100/s refills 10 tokens in 0.1 s
    assert [inflow.offer("flood", b"x", now) for _ in range(11)].count(None) == 10
    assert inflow.drops[RATE_LIMITED] == 41 and inflow.drops_by_peer["flood"] == 41


def test_queues_are_bounded_in_frames_and_bytes():
    inflow = Inflow(rate=1e9, burst=1e9, queue=3, stranger_rate=1, queue_bytes=100)
    assert [inflow.offer("p", b"a", 0.0) for _ in range(4)] == [None, None, None, QUEUE_FULL]
    assert inflow.offer("q", b"x" * 60, 0.0) is None and inflow.offer("q", b"x" * 60, 0.0) == QUEUE_FULL
    assert len(inflow) == 4 and inflow.bytes_waiting == 63


def test_peers_are_served_in_turn():
    inflow = Inflow(rate=1e9, burst=1e9, queue=1000, stranger_rate=1)
    for i in range(100):
        inflow.offer("flood", b"f%d" % i, 0.0)
    inflow.offer("a", b"a1", 0.0)
    inflow.offer("a", b"a2", 0.0)
    inflow.offer("b", b"b1", 0.0)
    served = [inflow.take() for _ in range(6)]
    assert served == [("flood", b"f0"), ("a", b"a1"), ("b", b"b1"), ("flood", b"f1"), ("a", b"a2"),
                      ("flood", b"f2")]
    while inflow.take():
        pass
    assert len(inflow) == 0 and inflow.bytes_waiting == 0 and inflow.take() is None


def test_all_strangers_share_one_small_bucket():
    inflow = Inflow(rate=1000, burst=1000, queue=1000, stranger_rate=5)
    results = [inflow.offer(STRANGER, b"s", 0.0) for _ in range(20)]
    assert results.count(None) == 10                     # a burst of twice the rate, then nothing
    assert inflow.offer("trusted", b"t", 0.0) is None


def test_peers_remembered_are_bounded_but_one_with_frames_waiting_is_kept():
    inflow = Inflow(rate=10, burst=10, queue=10, stranger_rate=1, max_peers=3)
    inflow.offer("waiting", b"w", 0.0)
    for i in range(10):
        inflow.offer(f"p{i}", b"x", float(i))
        assert inflow.peers[f"p{i}"].frames
        inflow.peers[f"p{i}"].frames.clear()          # as if served: idle peers may be forgotten
        inflow.ready.remove(f"p{i}")
        inflow.waiting -= 1
        inflow.bytes_waiting -= 1
        assert len(inflow.peers) <= 3
    assert "waiting" in inflow.peers and inflow.take() == ("waiting", b"w")
