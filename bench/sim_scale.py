"""Gossip at scale, in the simulator: real Nodes, real signed frames, a virtual clock.

For each cluster size N it prints
- frames (and KiB) sent per node per virtual second in steady state (gossip, relays, probes),
- rounds (gossip intervals) until one fresh load of a node, caused by a material change of its
  load, is held by every other node,
- seconds until a crashed node is dead at every other node, and how often healthy peers were
  suspected (refuted at once by their next load or a probe) or declared dead (should be 0) meanwhile,
- the host seconds the run took.

Run: python bench/sim_scale.py [--sizes 10,100,1000] [--seed 1]     (a couple of minutes)

Timings use the shipped GossipSettings defaults (0.5 s interval, 1.5 s / 4 s, fanout 3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xchanged.protocol.events import Capacity, ResourcesRead  # noqa: E402
from xchanged.protocol.membership import ALIVE, DEAD, GossipSettings  # noqa: E402
from xchanged.sim.cluster import SimCluster  # noqa: E402


def health(c: SimCluster, observer: str, target_id: str) -> str:
    peer = c.nodes[observer].node.membership.peers.get(target_id)
    return peer.health if peer else "unknown"


def all_alive(c: SimCluster) -> bool:
    ids = [nid for nid, s in c.nodes.items() if s.up]
    n = len(ids)
    for nid in ids:
        peers = c.nodes[nid].node.membership.peers
        if sum(1 for p in peers.values() if p.health == ALIVE and p.load is not None) < n - 1:
            return False
    return True


def bad_verdicts(c: SimCluster, victim: str | None = None) -> tuple[int, int]:
    """(suspected, declared dead): log lines about healthy peers (not the victim)."""
    name = c.nodes[victim].node.settings.name if victim else None
    suspected = dead = 0
    for s in c.nodes.values():
        for line in s.logs:
            if line.startswith("peer ") and (name is None or not line.startswith(f"peer {name} ")):
                suspected += line.endswith(" is suspect")
                dead += line.endswith(" is dead")
    return suspected, dead


def run(n: int, seed: int, settle_limit: float, window: float) -> dict:
    s = GossipSettings()
    t0 = time.perf_counter()
    c = SimCluster(seed=seed)
    for i in range(n):
        c.add_node(f"n{i}")
    ok = c.run_until(lambda: all_alive(c), limit=settle_limit)
    joined = c.now
    built = time.perf_counter() - t0
    if not ok:
        return {"n": n, "error": f"not all alive after {settle_limit:.0f} s virtual", "host_s": built}
    c.run_for(5 * s.interval)                      # let the join burst die down
    for sim in c.nodes.values():
        sim.logs.clear()

    # steady state traffic
    frames0, bytes0 = c.frames_sent, getattr(c, "bytes_sent", 0)
    c.run_for(window)
    frames = (c.frames_sent - frames0) / n / window
    kib = (getattr(c, "bytes_sent", 0) - bytes0) / n / window / 1024

    # one fresh load: a material change at node 0 (a big cpu jump) until everyone holds it
    ids = list(c.nodes)
    origin = c.nodes[ids[0]]
    seq0 = origin.encoder.seq
    start = c.now
    cap = origin.node.contractor.capacity
    c.deliver(ids[0], ResourcesRead(Capacity(cpus=cap.cpus, cpu_percent=95.0, mem_total=cap.mem_total,
                                             mem_available=cap.mem_available, gpus=cap.gpus)))
    spread_ok = c.run_until(lambda: all(c.nodes[x].node.membership.peers[ids[0]].load_version[1] > seq0
                                        for x in ids[1:]), limit=120)
    spread_rounds = (c.now - start) / s.interval if spread_ok else float("nan")

    # crash detection: the last node (never a seed) crashes
    for sim in c.nodes.values():
        sim.logs.clear()
    victim = ids[-1]
    c.crash(c.nodes[victim].node.settings.name)
    crashed = c.now
    others = [x for x in ids if x != victim]
    detect_ok = c.run_until(lambda: all(health(c, o, victim) == DEAD for o in others), limit=180)
    detect = c.now - crashed if detect_ok else float("nan")
    false = bad_verdicts(c, victim)
    return {"n": n, "join_s": joined, "frames": frames, "kib": kib, "spread": spread_rounds,
            "detect": detect, "false": false, "host_s": time.perf_counter() - t0}


def run_tables(n: int, seed: int, rounds: int) -> dict:
    """For N too large for the full simulator (every Node does O(N) work per event, and every new
    load costs an Ed25519 verification at each of N nodes), the gossip layer alone: N Membership
    tables in synchronous rounds, each distinct frame signed and verified once and shared. Steady
    state (every node refreshing its unchanged load), then one material change of node 0."""
    import random as _random

    from xchanged.protocol import codec
    from xchanged.protocol.membership import Membership
    from xchanged.protocol.messages import Load
    from xchanged.protocol.signing import TrustStore, generate_key, node_id, public_bytes
    s = GossipSettings()
    t0 = time.perf_counter()
    trust = TrustStore({})
    keys = [generate_key() for _ in range(n)]
    pubs = [public_bytes(k) for k in keys]
    for i, pub in enumerate(pubs):
        trust.keys[pub] = f"n{i}"
    encs = [codec.Encoder(k, p, 1) for k, p in zip(keys, pubs)]
    ids = [node_id(p) for p in pubs]
    by_address = {f"n{i}:1": i for i in range(n)}
    tables = [Membership(ids[i], s, _random.Random(seed * 7919 + i)) for i in range(n)]

    def load(i: int, cpu: float = 10.0) -> Load:
        return Load(name=f"n{i}", address=f"n{i}:1", slots=2, slots_free=2, running=0, queued=0, cpus=2,
                    cpu_percent=cpu, mem_total=1 << 30, mem_available=1 << 29)

    first = [codec.decode(encs[i].encode(load(i), 0), trust) for i in range(n)]
    for t in tables:                                # everyone known (the join is not measured here)
        for env in first:
            t.on_load(env, 0.0)
        for p in t.peers.values():
            p.relay_left = 0
    phase = _random.Random(seed)
    for t, env in zip(tables, first):               # nodes joined at different times: spread the heartbeats
        t.own_load_due(env.message)
        t._round += phase.randrange(t.refresh_rounds())
    decoded: dict[bytes, object] = {}
    messages = copies = 0
    inbox: list[tuple[int, bytes]] = []
    marked, marked_round, spread = None, None, float("nan")
    for r in range(1, rounds + 1):
        now = r * s.interval
        for k, raw in inbox:
            env = decoded.get(raw) or decoded.setdefault(raw, codec.decode(raw, trust))
            tables[k].on_load(env, now)
        if spread != spread and marked is not None and all(t.peers[ids[0]].load_version >= marked
                                                           for t in tables[1:]):
            spread = r - marked_round
        inbox = []
        for i, t in enumerate(tables):
            cpu = 95.0 if (i == 0 and r == rounds // 2) else (95.0 if i == 0 and marked else 10.0)
            own = load(i, cpu)
            targets = t.gossip_targets(live_too=t.own_load_due(own))
            if targets:
                raw = encs[i].encode(own, 0)
                if i == 0 and cpu == 95.0 and marked is None:
                    marked, marked_round = (1, encs[i].seq), r
                messages += len(targets)
                copies += len(targets)
                inbox += [(by_address[a], raw) for _, a in targets]
            for targets, frames in t.relays():
                messages += len(targets)
                copies += len(targets) * len(frames)
                inbox += [(by_address[a], f) for _, a in targets for f in frames]
    steady = r
    t = tables[1]
    return {"n": n, "frames": messages / n / (steady * s.interval), "copies": copies / n / (steady * s.interval),
            "spread": spread, "refresh": t.refresh_rounds(), "suspect": t.suspect_after, "dead": t.dead_after,
            "host_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=float, default=10.0, help="virtual seconds of steady state measured")
    ap.add_argument("--full-max", type=int, default=100, help="largest N run as whole Nodes")
    ap.add_argument("--rounds", type=int, default=120, help="rounds of the gossip-layer model")
    args = ap.parse_args()
    print(f"{'N':>5} {'join s':>7} {'frames/node/s':>14} {'KiB/node/s':>11} {'spread rounds':>14} "
          f"{'detect s':>9} {'false susp/dead':>16} {'host s':>7}", flush=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    for n in sizes:
        if n > args.full_max:
            continue
        r = run(n, args.seed, settle_limit=120.0, window=args.window)
        if "error" in r:
            print(f"{n:>5} {r['error']} (host {r['host_s']:.0f} s)", flush=True)
            continue
        print(f"{r['n']:>5} {r['join_s']:>7.1f} {r['frames']:>14.1f} {r['kib']:>11.1f} {r['spread']:>14.1f} "
              f"{r['detect']:>9.2f} {'%d/%d' % r['false']:>16} {r['host_s']:>7.1f}", flush=True)

    print(f"\ngossip layer alone (Membership tables, synchronous rounds):\n"
          f"{'N':>5} {'frames/node/s':>14} {'loads/node/s':>13} {'spread rounds':>14} {'refresh rounds':>15} "
          f"{'suspect/dead s':>15} {'host s':>7}", flush=True)
    for n in sizes:
        r = run_tables(n, args.seed, args.rounds)
        print(f"{r['n']:>5} {r['frames']:>14.1f} {r['copies']:>13.1f} {r['spread']:>14.0f} {r['refresh']:>15} "
              f"{'%.1f/%.1f' % (r['suspect'], r['dead']):>15} {r['host_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()

