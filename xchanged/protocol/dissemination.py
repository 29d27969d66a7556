"""Gossip: how the frames worth passing on (loads, suspicions, deaths) reach every node, at a bounded
cost per node whatever the cluster's size.

Rules:
- Relayable frames wait in a bounded queue (broadcasts.py), each to be passed on 4 log10 N times (a
  load only when its node says it changed: `Load.news`; a heartbeat is not passed on).
- Urgent news (`suspect`, `dead`, loads marked news, a load that brings a peer back, the first load
  we hear straight from a peer new to us: a newcomer, or one found across subnets by a seed, whose
  idle heartbeats would never be passed on) goes out at once in a gossip batch to `fanout` members,
  and again every interval/4 while it has copies left to pass on. Routine loads go once a round,
  `piggyback` of them in a gossip batch to one member; and every ping and pong carries the sender's
  own latest load and `piggyback` queued frames (news first, then the least passed on). A node's
  bandwidth is thus bounded whatever N is; when more loads change than that carries, each reaches
  fewer nodes (the newest first), news still all.
- A node that asks for a welcome (`joining`) gets our load and our table's best, in one batch.
The queue (`broadcasts`), our own latest load frame (`own_frame`) and when we last gossiped
(`last_gossip`) live on Membership; these functions take the membership they work on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .codec import Envelope
from .messages import LOAD_CHANGE, LOAD_NEWS, Gossip, Load
from .peers import ALIVE

if TYPE_CHECKING:
    from .membership import Membership

RETRANSMIT_MULT = 4            # each frame is passed on RETRANSMIT_MULT * log10(N) times by each node
MIN_ESTIMATE = 1000            # ... N taken as at least this


def news(m: Membership, key: tuple[Any, ...], frame: bytes, about: str, now: float) -> None:
    """Urgent news: queued ahead of routine loads, and a gossip batch goes out at once (at most
    every interval/4)."""
    m.broadcasts.put(key, frame, True, copies(m), about)
    if ("eager",) not in m.deadlines:
        m.deadlines.set(("eager",), max(now, m.last_gossip + m.settings.interval / 4))


def pass_on(m: Membership, env: Envelope, load: Load, news_to_us: bool, now: float) -> None:
    """Queue a load to gossip: as news when it says so or is news to us (it brings its node back, or
    is the first we hear straight from a newcomer), as a routine load when it says it changed; a
    heartbeat is not passed on."""
    if load.news >= LOAD_NEWS or news_to_us:
        news(m, ("load", env.sender), env.raw, env.sender, now)
    elif load.news >= LOAD_CHANGE:
        m.broadcasts.put(("load", env.sender), env.raw, False, copies(m), env.sender)


def eager(m: Membership, now: float) -> None:
    """The news timer: a batch of news now, and another interval/4 later while news is left."""
    gossip(m, now, routine=False)
    if m.broadcasts.has_urgent():                 # news left to pass on: soon, not next round
        m.deadlines.set(("eager",), now + m.settings.interval / 4)


def gossip(m: Membership, now: float, routine: bool) -> None:
    """A gossip batch: the news (up to max_batch frames) to `fanout` members and, once a round,
    `piggyback` routine loads (to one member when there is no news)."""
    urgent = m.broadcasts.has_urgent()
    targets = m.view.pick(m.settings.fanout if urgent else 1, m.reachable)
    if not targets:
        return
    frames = m.broadcasts.take(m.settings.max_batch, urgent_only=True, copies=len(targets))
    if routine:
        frames += m.broadcasts.take(m.settings.piggyback, copies=len(targets))
    if frames:
        m.last_gossip = now
        m.sends.append((tuple((t, m.peers[t].address) for t in targets), Gossip(frames)))
        m.stats["gossip_batches"] += 1


def piggyback(m: Membership, to: str) -> list[bytes]:
    """What a ping or pong carries: our own latest load, news of the peer it goes to first (so a
    suspect hears of its suspicion), then the queue's next frames."""
    frames = [m.own_frame] if m.own_frame else []
    first = [k for k in m.broadcasts.about(to) if k[0] != "load"]
    return frames + m.broadcasts.take(m.settings.piggyback, first=first)


def welcome(m: Membership) -> list[bytes]:
    """For a node new to us: our load and those of the peers we know best (sample, then view)."""
    frames = [m.own_frame] if m.own_frame else []
    most = min(m.settings.max_batch, 60)
    for peer_id in list(m.sample)[::-1] + list(m.view.members):
        if len(frames) >= most:
            break
        peer = m.peers.get(peer_id)
        if peer is not None and peer.health == ALIVE and peer.load_frame and peer.load_frame not in frames:
            frames.append(peer.load_frame)
    return frames


def copies(m: Membership) -> int:
    """How many times each frame is passed on by each node: memberlist's 4 * log10(N), enough for
    every node to get it with high probability, growing only with log N. N is estimated from the
    view, which underestimates it while a large cluster's views settle (a node that has heard of
    few peers): never less than for MIN_ESTIMATE nodes (the queue bounds the bandwidth anyway)."""
    return RETRANSMIT_MULT * math.ceil(math.log10(max(m.view.estimate(), MIN_ESTIMATE) + 1))
