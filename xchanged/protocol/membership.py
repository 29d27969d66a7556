"""The peer table and failure detection: SWIM with Lifeguard's guards, for clusters of any size.

Rules:
- A peer enters the table with its first verified load signal (which carries its address). The table
  holds the view and the sample (overlay.py), the peers our own tasks are with (`keep`), and a
  bounded list of the dead; any other peer is forgotten, and comes back with its next load.
- A peer's life is (incarnation, refutes) of its loads: a restart raises the incarnation, a refuted
  suspicion the refutes. Loads are ordered by (incarnation, seq); an older or equal one is a
  duplicate, dropped. A peer declared dead is remembered (a bounded list), so that stale relays of
  that life cannot bring it back.
- Probing (SWIM): every `interval` we ping the next member of the view, round-robin over a shuffled
  list. No pong within 0.4 interval: we ask `probe_k` other members to ping it for us (`ping_req`),
  so one bad link cannot get a healthy node suspected. No pong, direct or through a helper, by the
  end of the interval: we suspect that life of it. Both timeouts grow with our local health score
  (Lifeguard, suspicion.py): a node too slow to hear answers suspects no one for it.
- A suspicion is news: a signed `suspect` frame, sent to the suspect (so it refutes at once) and
  gossiped. Every node that holds the peer suspects it too (no new tasks for it) and starts a timer of
  between suspect_after - interval and dead_after - interval: the more independent suspicions of
  that life arrive, the shorter (Lifeguard). When the timer ends, that life is declared dead: a signed
  `dead` frame, gossiped likewise. A frame straight from a suspect clears our suspicion of it (we
  heard it alive ourselves); only a load of a higher life brings a peer back from death.
- A node that hears itself suspected or declared dead refutes: a fresh load with refutes + 1, marked
  as news (`Load.news`), sent at once to the teller and to `fanout` members.
- Gossip: relayable frames wait in a bounded queue (broadcasts.py), each to be passed on 4 log10 N
  times (a load only when its node says it changed: `Load.news`; a heartbeat is not passed on).
  Urgent news (`suspect`, `dead`, loads marked news, a load that brings a peer back, the first load
  we hear straight from a peer new to us: a newcomer, or one found across subnets by a seed, whose
  idle heartbeats would never be passed on) goes out at once
  in a gossip batch to `fanout` members, and again every interval/4 while it has copies left to
  pass on. Routine loads go once a round, `piggyback` of them in a gossip batch to one member;
  and every ping and pong carries the sender's own latest load and `piggyback` queued frames (news
  first, then the least passed on). A node's bandwidth is thus bounded whatever N is; when more
  loads change than that carries, each reaches fewer nodes (the newest first), news still all.
- Our own load: signed when it changed materially, every `refresh_rounds` rounds, when our view
  gained members, or to refute; sent to ourselves (the driver loops it back, so we hold its signed
  bytes to piggyback) and to the view's new members (they hear of us and, the pair hash being the
  same both ways, take us into their view: views stay nearly symmetric, so every node is probed
  and gossiped to about equally) or else one member; marked news when it refutes or when what we
  are changed (address, slots, labels, resources).
- Seeds: our load goes to every seed each round until the seed's node is known alive (again, if it
  is declared dead). While we know no live peer, our loads say `joining`, and a node that gets one
  directly answers with a welcome: its load and its table's, in one gossip batch (so does a node
  probed far less than once a round: it knows too few peers to be in its share of views). Seeds whose node
  we know (mDNS gives its key): one address per node; a rediscovered node's old discovered address
  is dropped (a configured seed stays); a suspect or dead node's address moves with it at once.
  Such a seed is left alone while its node is live and was heard from (a load) since the seed was
  announced.
- One dead peer a round gets our load and its death verdict, so a healed partition rejoins (an alive
  "dead" node refutes).
Work per input is bounded by the view, sample and queue sizes, not by the cluster's size; timers are
a deadline heap (deadlines.py).
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .broadcasts import Broadcasts
from .codec import Envelope
from .deadlines import Deadlines
from .messages import LOAD_CHANGE, LOAD_HEARTBEAT, LOAD_NEWS, Dead, Gossip, Load, Ping, PingReq, Pong, Suspect
from .overlay import Sample, View, pair_hash
from .suspicion import LocalHealth, Suspicion

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
OBITUARIES = 256               # deaths remembered of peers no longer in the table
RETRANSMIT_MULT = 4            # each frame is passed on RETRANSMIT_MULT * log10(N) times by each node
MIN_ESTIMATE = 1000            # ... N taken as at least this
ISOLATION_ROUNDS = 8           # pinged fewer than half as many times in as many rounds: ask for welcomes
GREETINGS = 1                  # new view members our load goes to in a round (the others in the next ones)

Target = tuple[str, str]       # (node id, address)
Life = tuple[int, int]         # (incarnation, refutes)


@dataclass(frozen=True, slots=True)
class GossipSettings:
    interval: float = 0.5      # one probe and one gossip round
    fanout: int = 3            # members each gossip batch and each of our loads goes to
    suspect_after: float = 1.5 # a silent peer is dead this long after the probe that found it silent,
    dead_after: float = 4.0    # ... or this long when no other node confirms the suspicion (Lifeguard)
    probe_k: int = 3           # members asked to probe a silent peer for us
    max_batch: int = 32        # frames in one gossip batch or welcome (messages.MAX_GOSSIP_FRAMES at most)
    view_size: int = 64        # peers probed and gossiped with (everyone, in a cluster this small)
    sample_size: int = 64      # peers with the freshest loads: those offered work
    piggyback: int = 2         # queued frames a ping or pong carries besides the sender's own load
    refresh_rounds: int = 4    # rounds between two of our loads when nothing changed
    queue: int = 256           # frames waiting to be passed on (broadcasts.py)


@dataclass(slots=True)
class Peer:
    id: str
    key: bytes
    address: str = ""
    health: str = ALIVE
    last_heard: float = 0.0
    load: Load | None = None
    load_version: tuple[int, int] = (-1, -1)   # (incarnation, seq) of `load`
    load_frame: bytes = b""
    load_received: float = 0.0
    incarnation: int = -1
    refutes: int = 0
    suspicion: Suspicion | None = None
    direct_version: tuple[int, int] = (-1, -1)  # (incarnation, seq) of the latest frame straight from it
    pair_hash: int = -1                          # overlay.pair_hash(us, it), once worked out

    @property
    def name(self) -> str:
        return self.load.name if self.load else ""

    @property
    def life(self) -> Life:
        return self.incarnation, self.refutes


@dataclass(slots=True)
class Transition:
    peer: Peer
    health: str


@dataclass(slots=True)
class Probe:
    target: str
    nonce: int
    started: float


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
        self.broadcasts = Broadcasts(s.queue)
        self.deadlines: Deadlines[tuple[Any, ...]] = Deadlines()
        self.health = LocalHealth()
        self.probe: Probe | None = None
        self.sends: list[tuple[tuple[Target, ...], Any]] = []    # what to send: the node takes them
        self.refute_to: dict[str, Target] | None = None          # set: sign and send a refutation now
        self.announce = False                                    # our next load is news for everyone
        self.own_news = LOAD_HEARTBEAT                           # what our load of this round is
        self._lingering: list[str] = []
        self._own_frame = b""
        self._own_load: Load | None = None
        self._round = 0
        self._own_round = -(1 << 30)
        self._nonce = 0
        self._last_gossip = -math.inf
        self._dead_target: Target | None = None
        self._seed_peers: dict[str, str] = {}                   # seed address -> the peer found there
        self._greet: dict[str, None] = {}                       # new view members: our next load goes to them
        self._pinged = 0                                        # pings for us this window (ISOLATION_ROUNDS)
        self._isolated = False
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
                self._probe_indirectly(key[1])
            elif kind == "probe-end":
                transitions += self._probe_failed(key[1], now)
            elif kind == "suspicion":
                transitions += self._suspicion_over(key[1], now)
            elif kind == "eager":
                self._gossip(now, routine=False)
                if self.broadcasts.has_urgent():                 # news left to pass on: soon, not next round
                    self.deadlines.set(("eager",), now + self.settings.interval / 4)
        return transitions, round_started

    def _start_round(self, now: float) -> None:
        s = self.settings
        self.next_round = now + s.interval
        self._round += 1
        if self.probe is None:
            self._start_probe(now)
        if len(self.broadcasts):
            self._gossip(now, routine=True)
        if self._round % ISOLATION_ROUNDS == 0:
            self._isolated = self._round > ISOLATION_ROUNDS and len(self.view) >= 2 * ISOLATION_ROUNDS \
                and self._pinged < ISOLATION_ROUNDS / 2
            self._pinged = 0
        self._dead_target = None
        if self.dead:
            peer = self.peers[self.rng.choice(list(self.dead))]
            if peer.address:
                self._dead_target = (peer.id, peer.address)
                self.sends.append(((self._dead_target,), Dead(peer.id, peer.incarnation, peer.refutes)))
        if self._lingering:                                 # one kept peer a round: still needed?
            self._forget(self._lingering.pop(0))

    # -- our own load ---------------------------------------------------------------------------

    def own_load_due(self, load: Load) -> bool:
        """Called once per round with our current load: sign and send a fresh one? Yes when it
        changed materially, every `refresh_rounds` rounds, or when it is news (`announce`). Sets
        `own_news`: what the load says of itself (Load.news)."""
        if structural_change(self._own_load, load):
            self.announce = True
        changed = material_change(self._own_load, load)
        self.own_news = LOAD_NEWS if self.announce else LOAD_CHANGE if changed else LOAD_HEARTBEAT
        if self.announce or changed or self._greet or self._isolated \
                or self._round - self._own_round >= self.settings.refresh_rounds:
            self._own_load, self._own_round = load, self._round
            return True
        return False

    def own_load_targets(self, live_too: bool = True) -> list[Target]:
        """Who gets our load this round: ourselves (its bytes come back to piggyback: it rides our
        probes and gossip from then on) and a member new to our view (so it hears of
        us, and likely takes us into its own: the pair hash is the same both ways), else one random
        member (when `live_too`); every seed whose node is not known alive, the dead peer of the round."""
        targets: dict[str, Target] = {}
        if live_too:
            if self.address:
                targets[self.address] = (self.self_id, self.address)
            greet = [m for m in self._greet if m in self.view and self._reachable(m)][:GREETINGS]
            for peer_id in greet:
                del self._greet[peer_id]
            if not greet:
                self._greet.clear()
            for peer_id in greet or self.view.pick(1, self._reachable):
                peer = self.peers[peer_id]
                targets.setdefault(peer.address, (peer.id, peer.address))
        for address in self.seeds:
            if self._seed_due(address):
                targets.setdefault(address, ("", address))
        if self._dead_target is not None:
            targets.setdefault(self._dead_target[1], self._dead_target)
        return list(targets.values())

    def take_refutation(self) -> list[Target]:
        """A refutation is due: where our fresh `announce` load goes now (tellers, fanout members, us)."""
        tellers, self.refute_to = self.refute_to or {}, None
        self.announce = True
        targets = dict(tellers)
        for address, target in ((t[1], t) for t in self.own_load_targets()):
            targets.setdefault(address, target)
        return list(targets.values())

    def sent_own_load(self) -> None:
        self.announce = False

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
            self._own_frame = env.raw
            if load.news >= LOAD_NEWS:
                self._news(("load", self.self_id), env.raw, self.self_id, now)
            return False, []
        life = (env.incarnation, load.refutes)
        if self._buried(env.sender, life):
            return False, []
        version = (env.incarnation, env.seq)
        peer = self.peers.get(env.sender)
        new = peer is None
        if peer is None:
            if relayed and not self._worth_a_place(env.sender, load):
                self._pass_on(env, load, False, now)             # passed on, not kept: its node is not for us
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
        self._pass_on(env, load, (back or (new and not relayed)) and peer.health == ALIVE, now)
        if load.joining and not relayed and peer.address:
            self.sends.append((((peer.id, peer.address),), Gossip(self._welcome())))
        if peer.address and peer.address in self.seeds:
            self._seed_peers[peer.address] = peer.id
        return True, transitions

    def _pass_on(self, env: Envelope, load: Load, came_back: bool, now: float) -> None:
        """Queue a load to gossip: as news when it says so or brings its node back, as a routine load
        when it says it changed; a heartbeat is not passed on."""
        if load.news >= LOAD_NEWS or came_back:
            self._news(("load", env.sender), env.raw, env.sender, now)
        elif load.news >= LOAD_CHANGE:
            self.broadcasts.put(("load", env.sender), env.raw, False, self._copies(), env.sender)

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
            self._news(key, env.raw, node, now)
            return False, None
        peer = self.peers.get(node)
        if self._buried(node, life) or (peer is not None and (life < peer.life or peer.health == DEAD)):
            return False, None
        self._news(key, env.raw, node, now)
        if peer is not None:
            peer.incarnation, peer.refutes = max(peer.life, life)
        return True, peer

    def add_seed(self, address: str, source: str = "seed", node: str = "", now: float = 0.0) -> None:
        """A static or discovered address to send our load to; `node`: whose it is, when known."""
        if not address:
            return
        if node and node != self.self_id:
            for old, (owner, _) in list(self.seed_owner.items()):
                if owner == node and old != address:        # it moved: forget where it was
                    del self.seed_owner[old]
                    if self.seeds.get(old) == source:       # a configured seed at that address stays
                        del self.seeds[old]
            self.seed_owner[address] = (node, now)
            peer = self.peers.get(node)
            if peer is not None and peer.health != ALIVE:
                peer.address = address
        self.seeds.setdefault(address, source)

    # -- probes ---------------------------------------------------------------------------------

    def on_ping(self, env: Envelope) -> tuple[Target, Pong] | None:
        """Answer a ping: to the asker, or back through the node that probes on its behalf."""
        ping: Ping = env.message
        if ping.reply_via is None:
            self._pinged += 1
        peer = self.peers.get(env.sender)
        address = ping.reply_to or (peer.address if peer is not None else "")
        if not address:
            return None
        return (env.sender, address), Pong(nonce=ping.nonce, for_node=ping.reply_via or env.sender,
                                           for_address=ping.via_address, gossip=self._piggyback(env.sender))

    def on_ping_req(self, env: Envelope) -> tuple[Target, Ping] | None:
        req: PingReq = env.message
        target = self.peers.get(req.target)
        address = req.target_address or (target.address if target is not None else "")
        if not address:
            return None
        asker = self.peers.get(env.sender)
        via = req.reply_to or (asker.address if asker is not None else "")
        return (req.target, address), Ping(nonce=req.nonce, reply_via=env.sender, reply_to=self.address,
                                           via_address=via)

    def on_pong(self, env: Envelope, now: float) -> tuple[list[Transition], Target | None]:
        """A pong for us proves its sender alive (and ends our probe of it); a pong for someone else
        is forwarded to them."""
        pong: Pong = env.message
        transitions = self.on_direct(env, now)
        if pong.for_node == self.self_id:
            probe = self.probe
            if probe is not None and probe.nonce == pong.nonce and probe.target == env.sender:
                self._end_probe()
                self.health.better()
                self.stats["probes_answered"] += 1
            return transitions, None
        asker = self.peers.get(pong.for_node)
        address = pong.for_address or (asker.address if asker is not None else "")
        return transitions, ((pong.for_node, address) if address else None)

    def _start_probe(self, now: float) -> None:
        target = self.view.next_probe(lambda peer_id: self.peers[peer_id].health != DEAD
                                      and bool(self.peers[peer_id].address))
        if target is None:
            return
        peer, s = self.peers[target], self.settings
        self._nonce += 1
        self.probe = Probe(target, self._nonce, now)
        self.stats["probes"] += 1
        self.sends.append((((target, peer.address),),
                           Ping(nonce=self._nonce, reply_to=self.address, gossip=self._piggyback(target))))
        self.deadlines.set(("probe-indirect", self._nonce), now + self.health.scale(0.4 * s.interval))
        self.deadlines.set(("probe-end", self._nonce), now + self.health.scale(s.interval))

    def _end_probe(self) -> None:
        if self.probe is not None:
            self.deadlines.cancel(("probe-indirect", self.probe.nonce))
            self.deadlines.cancel(("probe-end", self.probe.nonce))
            self.probe = None

    def _probe_indirectly(self, nonce: int) -> None:
        probe = self.probe
        peer = self.peers.get(probe.target) if probe is not None else None
        if probe is None or peer is None or probe.nonce != nonce:
            return
        for helper in self.view.pick(self.settings.probe_k, lambda h: h != probe.target and self._reachable(h)):
            self.sends.append((((helper, self.peers[helper].address),),
                               PingReq(target=probe.target, nonce=probe.nonce, target_address=peer.address,
                                       reply_to=self.address)))

    def _probe_failed(self, nonce: int, now: float) -> list[Transition]:
        probe = self.probe
        if probe is None or probe.nonce != nonce:
            return []
        self._end_probe()
        self.health.worse()
        self.stats["probes_failed"] += 1
        peer = self.peers.get(probe.target)
        if peer is None or peer.health == DEAD:
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

    # -- gossip ---------------------------------------------------------------------------------

    def _news(self, key: tuple[Any, ...], frame: bytes, about: str, now: float) -> None:
        """Urgent news: queued ahead of routine loads, and a gossip batch goes out at once (at most
        every interval/4)."""
        self.broadcasts.put(key, frame, True, self._copies(), about)
        if ("eager",) not in self.deadlines:
            self.deadlines.set(("eager",), max(now, self._last_gossip + self.settings.interval / 4))

    def _gossip(self, now: float, routine: bool) -> None:
        """A gossip batch: the news (up to max_batch frames) to `fanout` members and, once a round,
        `piggyback` routine loads (to one member when there is no news)."""
        news = self.broadcasts.has_urgent()
        targets = self.view.pick(self.settings.fanout if news else 1, self._reachable)
        if not targets:
            return
        frames = self.broadcasts.take(self.settings.max_batch, urgent_only=True, copies=len(targets))
        if routine:
            frames += self.broadcasts.take(self.settings.piggyback, copies=len(targets))
        if frames:
            self._last_gossip = now
            self.sends.append((tuple((t, self.peers[t].address) for t in targets), Gossip(frames)))
            self.stats["gossip_batches"] += 1

    def _piggyback(self, to: str) -> list[bytes]:
        """What a ping or pong carries: our own latest load, news of the peer it goes to first (so a
        suspect hears of its suspicion), then the queue's next frames."""
        frames = [self._own_frame] if self._own_frame else []
        first = [k for k in self.broadcasts.about(to) if k[0] != "load"]
        return frames + self.broadcasts.take(self.settings.piggyback, first=first)

    def _welcome(self) -> list[bytes]:
        """For a node new to us: our load and those of the peers we know best (sample, then view)."""
        frames = [self._own_frame] if self._own_frame else []
        most = min(self.settings.max_batch, 60)
        for peer_id in list(self.sample)[::-1] + list(self.view.members):
            if len(frames) >= most:
                break
            peer = self.peers.get(peer_id)
            if peer is not None and peer.health == ALIVE and peer.load_frame and peer.load_frame not in frames:
                frames.append(peer.load_frame)
        return frames

    def _copies(self) -> int:
        """How many times each frame is passed on by each node: memberlist's 4 * log10(N), enough for
        every node to get it with high probability, growing only with log N. N is estimated from the
        view, which underestimates it while a large cluster's views settle (a node that has heard of
        few peers): never less than for MIN_ESTIMATE nodes (the queue bounds the bandwidth anyway)."""
        return RETRANSMIT_MULT * math.ceil(math.log10(max(self.view.estimate(), MIN_ESTIMATE) + 1))

    # -- the table ------------------------------------------------------------------------------

    def _place(self, peer: Peer) -> None:
        """A live peer we heard a new load of: in the view if it qualifies, the freshest of the sample."""
        was_member = peer.id in self.view
        if peer.pair_hash < 0:
            peer.pair_hash = pair_hash(self.self_id, peer.id)
        member, pushed_out = self.view.offer(peer.id, peer.pair_hash)
        if member and not was_member:
            self._greet[peer.id] = None
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

    def _reachable(self, peer_id: str) -> bool:
        peer = self.peers[peer_id]
        return peer.health == ALIVE and bool(peer.address)

    def _seed_due(self, address: str) -> bool:
        """Does a seed need our load this round? Until a live peer answers from it (for a seed whose
        node is known: until that node's load came after the seed was announced), and again once
        that peer is declared dead. A peer merely forgotten (the sample moved on) needs nothing."""
        owner = self.seed_owner.get(address)
        if owner is not None:
            peer = self.peers.get(owner[0])
            if peer is None:
                return owner[0] not in self._seed_peers.values() or owner[0] in self.obituaries
            return peer.health == DEAD or peer.load is None or peer.load_received < owner[1]
        found = self._seed_peers.get(address)
        if found is None:
            found = next((p.id for p in self.peers.values() if p.address == address and p.health != DEAD), None)
            if found is None:
                return True
            self._seed_peers[address] = found
        peer = self.peers.get(found)
        return found in self.obituaries if peer is None else peer.health == DEAD or peer.address != address

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
        return not self.view.members or self._isolated


def material_change(old: Load | None, new: Load) -> bool:
    """Worth a fresh signed load before the next heartbeat: slots, queue, labels, address, audit
    head, GPUs or draining changed, cpu moved 10 points, available memory 10% of the total."""
    if old is None:
        return True
    if (old.slots, old.slots_free, old.running, old.queued, old.name, old.address, old.labels, old.audit_head,
            len(old.gpus), old.draining) != (new.slots, new.slots_free, new.running, new.queued, new.name,
                                             new.address, new.labels, new.audit_head, len(new.gpus), new.draining):
        return True
    if abs(new.cpu_percent - old.cpu_percent) >= 10 or abs(new.mem_available - old.mem_available) > new.mem_total / 10:
        return True
    return any(abs(a.mem_free - b.mem_free) > b.mem_total / 10 or abs(a.util_percent - b.util_percent) >= 10
               for a, b in zip(old.gpus, new.gpus))


def structural_change(old: Load | None, new: Load) -> bool:
    """What the node is changed (not how busy it is): news for every node, announced at once."""
    return old is not None and (old.name, old.address, old.slots, old.cpus, old.mem_total, old.labels,
                                len(old.gpus)) != (new.name, new.address, new.slots, new.cpus, new.mem_total,
                                                   new.labels, len(new.gpus))
