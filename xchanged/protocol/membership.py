"""The peer table and failure detection: SWIM with Lifeguard's guards, for clusters of any size.

Rules:
- A peer enters the table with its first verified load signal (which carries its address). The table
  holds the view and the sample (overlay.py), the peers our own tasks are with (`keep`), and a
  bounded list of the dead; any other peer is forgotten, and comes back with its next load.
- A peer's life is (incarnation, refutes) of its loads: a restart raises the incarnation, a refuted
  suspicion the refutes. Loads are ordered by (incarnation, seq); an older or equal one is a
  duplicate, dropped. A peer declared dead is remembered (a bounded list), so that stale relays of
  that life cannot bring it back.
- A member of the view that answers no probe within a round (probing.py) is suspected (that life).
- A suspicion is news: a signed `suspect` frame, sent to the suspect (so it refutes at once) and
  gossiped. Every node that holds the peer suspects it too (no new tasks for it) and starts a timer of
  between suspect_after - interval and dead_after - interval: the more independent suspicions of
  that life arrive, the shorter (Lifeguard). When the timer ends, that life is declared dead: a signed
  `dead` frame, gossiped likewise. A frame straight from a suspect clears our suspicion of it (we
  heard it alive ourselves); only a load of a higher life brings a peer back from death.
- A node that hears itself suspected or declared dead refutes: a fresh load with refutes + 1, marked
  as news (`Load.news`), sent at once to the teller and to `fanout` members.
- One dead peer a round gets our load and its death verdict, so a healed partition rejoins (an alive
  "dead" node refutes).
Work per input is bounded by the view, sample and queue sizes, not by the cluster's size; timers are
a deadline heap (deadlines.py). All the state is here, in `Membership`; functions over it, one idea a
module: probing.py (SWIM probes), dissemination.py (gossip), own_load.py (our load, seeds).
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from . import dissemination, own_load, probing
from .broadcasts import Broadcasts
from .codec import Envelope
from .deadlines import Deadlines
from .messages import LOAD_HEARTBEAT, LOAD_NEWS, Dead, Gossip, Load, Ping, Pong, Suspect
from .overlay import Sample, View, pair_hash
from .peers import ALIVE, DEAD, SUSPECT, GossipSettings, Life, Peer, Target, Transition
from .probing import Probe
from .suspicion import LocalHealth, Suspicion

__all__ = ["ALIVE", "DEAD", "SUSPECT", "GossipSettings", "Life", "Membership", "Peer", "Target", "Transition"]

OBITUARIES = 256               # deaths remembered of peers no longer in the table


@dataclass(eq=False)
class Membership:
    self_id: str
    settings: GossipSettings
    rng: random.Random
    address: str = ""                                          # ours: where pongs come back to
    keep: Callable[[str], bool] = lambda peer_id: False        # a peer our tasks are with: never forgotten
    peers: dict[str, Peer] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)        # address -> source
    seed_owner: dict[str, tuple[str, float]] = field(default_factory=dict)  # address -> (node id, announced at)
    refutes: int = 0                                           # our own life's refutation count
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        s = self.settings
        self.view = View(self.self_id, s.view_size, self.rng)
        self.sample = Sample(s.sample_size)
        self.dead: OrderedDict[str, None] = OrderedDict()
        self.obituaries: OrderedDict[str, Life] = OrderedDict()
        self.deadlines: Deadlines[tuple[Any, ...]] = Deadlines()
        self.health = LocalHealth()
        self.sends: list[tuple[tuple[Target, ...], Any]] = []    # what to send: the node takes them
        self.refute_to: dict[str, Target] | None = None          # set: sign and send a refutation now
        self.rounds = 0                                          # gossip rounds started
        self.dead_target: Target | None = None                   # the dead peer of this round
        self._lingering: list[str] = []
        # probing.py
        self.probe: Probe | None = None
        self.probe_nonce = 0
        self.pinged = 0                                          # pings for us this window (ISOLATION_ROUNDS)
        self.isolated = False
        # dissemination.py
        self.broadcasts = Broadcasts(s.queue)
        self.own_frame = b""                                     # our latest load, signed (looped back)
        self.last_gossip = -math.inf
        # own_load.py
        self.announce = False                                    # our next load is news for everyone
        self.own_news = LOAD_HEARTBEAT                           # what our load of this round is
        self.own_load_signed: Load | None = None
        self.own_round = -(1 << 30)
        self.seed_peers: dict[str, str] = {}                     # seed address -> the peer found there
        self.greet: dict[str, None] = {}                         # new view members: our next load goes to them
        self.deadlines.set(("round",), 0.0)

    # -- time -----------------------------------------------------------------------------------

    @property
    def next_round(self) -> float:
        return self.deadlines.get(("round",)) or 0.0

    @next_round.setter
    def next_round(self, when: float) -> None:
        self.deadlines.set(("round",), when)

    def next_deadline(self) -> float:
        return self.deadlines.next()

    def on_timer(self, now: float) -> tuple[list[Transition], bool]:
        """Whatever is due: (transitions, whether a gossip round started: then call own_load_due)."""
        transitions: list[Transition] = []
        round_started = False
        for key in sorted(self.deadlines.due(now), key=lambda k: k[0] == "round"):   # a probe ends before the next
            kind = key[0]
            if kind == "round":
                self._start_round(now)
                round_started = True
            elif kind == "probe-indirect":
                probing.ask_helpers(self, key[1])
            elif kind == "probe-end":
                transitions += self._probe_failed(key[1], now)
            elif kind == "suspicion":
                transitions += self._suspicion_over(key[1], now)
            elif kind == "eager":
                dissemination.eager(self, now)
        return transitions, round_started

    def _start_round(self, now: float) -> None:
        s = self.settings
        self.next_round = now + s.interval
        self.rounds += 1
        if self.probe is None:
            probing.start(self, now)
        if len(self.broadcasts):
            dissemination.gossip(self, now, routine=True)
        probing.judge_isolation(self)
        self.dead_target = None
        if self.dead:
            peer = self.peers[self.rng.choice(list(self.dead))]
            if peer.address:
                self.dead_target = (peer.id, peer.address)
                self.sends.append(((self.dead_target,), Dead(peer.id, peer.incarnation, peer.refutes)))
        if self._lingering:                                 # one kept peer a round: still needed?
            self._forget(self._lingering.pop(0))

    # -- our own load (own_load.py) -------------------------------------------------------------

    def own_load_due(self, load: Load) -> bool:
        return own_load.due(self, load)

    def own_load_targets(self, live_too: bool = True) -> list[Target]:
        return own_load.targets(self, live_too)

    def take_refutation(self) -> list[Target]:
        return own_load.refutation_targets(self)

    def sent_own_load(self) -> None:
        self.announce = False

    def add_seed(self, address: str, source: str = "seed", node: str = "", now: float = 0.0) -> None:
        own_load.add_seed(self, address, source, node, now)

    # -- input ----------------------------------------------------------------------------------

    def on_load(self, env: Envelope, now: float, wall_ms: int | None = None,
                relayed: bool = False) -> tuple[bool, list[Transition]]:
        """A load signal, direct or relayed. Returns (is_new, transitions).

        A relayed load proves its node alive when the node signed it, not when a relay delivered it:
        the age comes from the signer's timestamp, clamped to `2 * interval` (clock skew then costs a
        little freshness, never a false death). It never clears a suspicion of its life: it may have
        been signed before the node died."""
        load: Load = env.message
        if env.sender == self.self_id:
            self.own_frame = env.raw
            if load.news >= LOAD_NEWS:
                dissemination.news(self, ("load", self.self_id), env.raw, self.self_id, now)
            return False, []
        life = (env.incarnation, load.refutes)
        if self._buried(env.sender, life):
            return False, []
        version = (env.incarnation, env.seq)
        peer = self.peers.get(env.sender)
        met_now = peer is None and not relayed                   # a newcomer, or one a seed led to
        if peer is None:
            if relayed and not self._worth_a_place(env.sender, load):
                dissemination.pass_on(self, env, load, False, now)   # passed on, not kept: its node is not for us
                return False, []
            peer = self.peers[env.sender] = Peer(env.sender, env.sender_key, incarnation=env.incarnation,
                                                 refutes=load.refutes)
        elif version <= peer.load_version:
            return False, [] if relayed else self._heard_now(peer, env, now)
        back = peer.health != ALIVE
        peer.load, peer.load_version, peer.load_frame, peer.load_received = load, version, env.raw, now
        peer.address = load.address
        transitions = self._new_life(peer, life, now)
        if relayed:
            age = 0.0 if wall_ms is None else min(max(0.0, (wall_ms - env.ts_ms) / 1000), 2 * self.settings.interval)
            peer.last_heard = max(peer.last_heard, now - age)
        else:
            transitions += self._heard_now(peer, env, now)
        if peer.health != DEAD:
            self._place(peer)
        dissemination.pass_on(self, env, load, (back or met_now) and peer.health == ALIVE, now)
        if load.joining and not relayed and peer.address:
            self.sends.append((((peer.id, peer.address),), Gossip(dissemination.welcome(self))))
        if peer.address and peer.address in self.seeds:
            self.seed_peers[peer.address] = peer.id
        return True, transitions

    def _worth_a_place(self, peer_id: str, load: Load) -> bool:
        """Would a peer we do not hold get a place in the table: in the view (its pair hash), in the
        sample (room, or a load a manager or a freed slot can use: a free slot, queued work), or as ours?"""
        if self.view.would_take(peer_id) or len(self.sample) < self.sample.size:
            return True
        return load.slots_free > 0 or load.queued > 0 or self.keep(peer_id)

    def on_direct(self, env: Envelope, now: float) -> list[Transition]:
        """Any other verified frame straight from a known peer proves it alive now."""
        peer = self.peers.get(env.sender)
        return [] if peer is None else self._heard_now(peer, env, now)

    def superseded(self, env: Envelope) -> bool:
        """A load older than a frame that came straight from its node since (a bid, a refusal...):
        it tells a manager nothing it does not know better already."""
        peer = self.peers.get(env.sender)
        return peer is not None and (env.incarnation, env.seq) < peer.direct_version

    def on_suspect(self, env: Envelope, now: float) -> list[Transition]:
        msg: Suspect = env.message
        life = (msg.incarnation, msg.refutes)
        news, peer = self._take_verdict(env, msg.node, life, ("suspect", msg.node, env.sender), now)
        if not news or peer is None:
            return []
        if peer.suspicion is None or peer.suspicion.life != life:
            return self._suspect(peer, env.sender, now)
        if peer.suspicion.confirm(env.sender):
            self.deadlines.set(("suspicion", peer.id), peer.suspicion.deadline)
        return []

    def on_dead(self, env: Envelope, now: float) -> list[Transition]:
        msg: Dead = env.message
        life = (msg.incarnation, msg.refutes)
        news, peer = self._take_verdict(env, msg.node, life, ("dead", msg.node), now)
        if not news:
            return []
        if peer is None:
            self._bury(msg.node, life)
            return []
        return self._kill(peer)

    def _take_verdict(self, env: Envelope, node: str, life: Life, key: tuple[str, ...],
                      now: float) -> tuple[bool, Peer | None]:
        """What a suspect and a dead verdict about `node` share: one about us is refuted; our own,
        looped back, is passed on; one no newer than what we know is dropped; news is passed on and
        the peer's life moves up to it. (news for the caller to act on, the peer if we know it)"""
        if node == self.self_id:
            self._refute(env.sender, life)
            return False, None
        if env.sender == self.self_id:
            dissemination.news(self, key, env.raw, node, now)
            return False, None
        peer = self.peers.get(node)
        if self._buried(node, life) or (peer is not None and (life < peer.life or peer.health == DEAD)):
            return False, None
        dissemination.news(self, key, env.raw, node, now)
        if peer is not None:
            peer.incarnation, peer.refutes = max(peer.life, life)
        return True, peer

    # -- probes (probing.py) --------------------------------------------------------------------

    def on_ping(self, env: Envelope) -> tuple[Target, Pong] | None:
        return probing.answer_ping(self, env)

    def on_ping_req(self, env: Envelope) -> tuple[Target, Ping] | None:
        return probing.ping_for(self, env)

    def on_pong(self, env: Envelope, now: float) -> tuple[list[Transition], Target | None]:
        return probing.on_pong(self, env, now)

    def _end_probe(self) -> None:
        probing.end(self)

    def _probe_failed(self, nonce: int, now: float) -> list[Transition]:
        """Our probe of a peer got no answer in time: suspect it, or confirm our suspicion, and say so."""
        peer = probing.failed(self, nonce)
        if peer is None:
            return []
        transitions: list[Transition] = []
        if peer.health == ALIVE:
            transitions = self._suspect(peer, self.self_id, now)
        elif peer.suspicion is not None and peer.suspicion.confirm(self.self_id):
            self.deadlines.set(("suspicion", peer.id), peer.suspicion.deadline)
        else:
            return []                                           # we said so already
        # our word: to the suspect (so it refutes at once) and to ourselves (its bytes come back to gossip)
        self.sends.append((((peer.id, peer.address), (self.self_id, self.address)),
                           Suspect(peer.id, peer.incarnation, peer.refutes)))
        return transitions

    # -- suspicion, death, refutation -----------------------------------------------------------

    def _suspect(self, peer: Peer, first: str, now: float) -> list[Transition]:
        s = self.settings
        alive = sum(1 for m in self.view.members if self.peers[m].health == ALIVE and m != peer.id)
        peer.suspicion = Suspicion(peer.life, now, first, expected=min(s.probe_k, alive),
                                   shortest=max(s.interval, s.suspect_after - s.interval),
                                   longest=max(s.interval, s.dead_after - s.interval))
        self.deadlines.set(("suspicion", peer.id), peer.suspicion.deadline)
        self.stats["suspected"] += 1
        if peer.health == SUSPECT:
            return []
        peer.health = SUSPECT
        return [Transition(peer, SUSPECT)]

    def _suspicion_over(self, peer_id: str, now: float) -> list[Transition]:
        peer = self.peers.get(peer_id)
        if peer is None or peer.health != SUSPECT:
            return []
        self.stats["declared_dead"] += 1
        self.sends.append((((peer.id, peer.address), (self.self_id, self.address)),
                           Dead(peer.id, peer.incarnation, peer.refutes)))
        return self._kill(peer)

    def _kill(self, peer: Peer) -> list[Transition]:
        peer.health, peer.suspicion = DEAD, None
        self.deadlines.cancel(("suspicion", peer.id))
        if self.probe is not None and self.probe.target == peer.id:
            self._end_probe()
        self.view.remove(peer.id)
        self.sample.remove(peer.id)
        for key in self.broadcasts.about(peer.id):
            if key[0] == "suspect":
                self.broadcasts.drop(key)
        self.dead[peer.id] = None
        while len(self.dead) > self.settings.view_size:
            oldest, _ = self.dead.popitem(last=False)
            gone = self.peers.get(oldest)
            if gone is not None:
                self._bury(oldest, gone.life)
            self._forget(oldest)
        return [Transition(peer, DEAD)]

    def _refute(self, teller: str, life: Life) -> None:
        if life[1] < self.refutes:
            return                                              # about a life we have refuted already
        self.refutes = life[1] + 1
        self.health.worse()
        self.stats["refuted"] += 1
        if self.refute_to is None:
            self.refute_to = {}
        peer = self.peers.get(teller)
        if peer is not None and peer.address and teller != self.self_id:
            self.refute_to[peer.address] = (peer.id, peer.address)

    def _new_life(self, peer: Peer, life: Life, now: float) -> list[Transition]:
        """A load of a higher life: any suspicion or verdict of an older one is void."""
        if life <= peer.life:
            return []
        peer.incarnation, peer.refutes = life
        for key in self.broadcasts.about(peer.id):
            if key[0] != "load":
                self.broadcasts.drop(key)
        self.obituaries.pop(peer.id, None)
        return self._revive(peer) if peer.health != ALIVE else []

    def _heard_now(self, peer: Peer, env: Envelope, now: float) -> list[Transition]:
        incarnation = env.incarnation
        if incarnation < peer.incarnation:
            return []                                           # a stale frame of a previous life
        peer.last_heard = max(peer.last_heard, now)
        peer.direct_version = max(peer.direct_version, (incarnation, env.seq))
        if incarnation > peer.incarnation:                      # restarted: its load will follow
            return self._new_life(peer, (incarnation, 0), now)
        return self._revive(peer) if peer.health == SUSPECT else []

    def _revive(self, peer: Peer) -> list[Transition]:
        peer.health, peer.suspicion = ALIVE, None
        self.deadlines.cancel(("suspicion", peer.id))
        self.dead.pop(peer.id, None)
        self._place(peer)
        return [Transition(peer, ALIVE)]

    # -- the table ------------------------------------------------------------------------------

    def _place(self, peer: Peer) -> None:
        """A live peer we heard a new load of: in the view if it qualifies, the freshest of the sample."""
        was_member = peer.id in self.view
        if peer.pair_hash < 0:
            peer.pair_hash = pair_hash(self.self_id, peer.id)
        member, pushed_out = self.view.offer(peer.id, peer.pair_hash)
        if member and not was_member:
            self.greet[peer.id] = None
        if pushed_out is not None:
            self._forget(pushed_out)
        pushed_out = self.sample.touch(peer.id, peer.load is not None and peer.load.slots_free > 0)
        if pushed_out is not None:
            self._forget(pushed_out)

    def _forget(self, peer_id: str) -> None:
        """Drop a peer from the table unless it is in the view, the sample, the dead list, or ours."""
        if peer_id in self.view or peer_id in self.sample or peer_id in self.dead or peer_id not in self.peers:
            return
        if self.keep(peer_id):
            if peer_id not in self._lingering:
                self._lingering.append(peer_id)
            return
        peer = self.peers.pop(peer_id)
        self.deadlines.cancel(("suspicion", peer_id))
        if self.probe is not None and self.probe.target == peer_id:
            self._end_probe()
        if peer.health == SUSPECT:
            self.stats["forgotten_suspects"] += 1

    def _bury(self, peer_id: str, life: Life) -> None:
        self.obituaries[peer_id] = max(life, self.obituaries.get(peer_id, life))
        self.obituaries.move_to_end(peer_id)
        while len(self.obituaries) > OBITUARIES:
            self.obituaries.popitem(last=False)

    def _buried(self, peer_id: str, life: Life) -> bool:
        """A life of a peer we forgot after it was declared dead."""
        buried = self.obituaries.get(peer_id)
        return buried is not None and life <= buried and peer_id not in self.peers

    def reachable(self, peer_id: str) -> bool:
        peer = self.peers[peer_id]
        return peer.health == ALIVE and bool(peer.address)

    def take_sends(self) -> list[tuple[tuple[Target, ...], Any]]:
        sends, self.sends = self.sends, []
        return sends

    # -- queries --------------------------------------------------------------------------------

    def live_peers(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.health != DEAD]

    def healthy(self) -> list[Peer]:
        """The sample's live peers with a load: those offered work."""
        out = []
        for peer_id in self.sample:
            peer = self.peers[peer_id]
            if peer.health == ALIVE and peer.load is not None:
                out.append(peer)
        return out

    def estimate(self) -> int:
        return self.view.estimate()

    @property
    def joining(self) -> bool:
        """Our loads ask for a welcome: we know no live peer yet, or we are isolated (probed far less
        than once a round: few views hold us, because we know too few peers to have found those
        whose views we belong in; a welcome's worth of loads tells us of more)."""
        return not self.view.members or self.isolated

