"""A hostile peer: floods one daemon's peer socket with bad frames of every kind (test_hostile_peer.py).

    python -m integration.hostile_flood --target 127.0.0.1:7946 --target-key B64 --key hostile/node.key \
        [--per-kind 20000] [--rate 15000]

It holds the key of a node the target trusts (a compromised peer: its Curve connection is admitted)
and sends over that one connection, interleaved, `per-kind` frames of each of:
  random     random bytes
  bad_sig    a well-formed header and msgpack payload under its own key, with a random signature
  untrusted  frames correctly signed by a key the target does not trust
  replay     one valid frame it signed, sent again and again
paced at `rate` frames per second (blocking sends: none is dropped on this side, so every one of
them reaches the target's socket). Then, each on a connection of its own:
  plaintext  frames from a client without Curve (the handshake fails: none is delivered)
  zap        frames from a Curve client whose key the target does not trust (refused by ZAP)
  oversized  10 MB frames over admitted connections (cut by the target's MAXMSGSIZE, which closes
             the connection; a fresh connection for each)
Prints "ready" once its frames are built (signing takes a moment), then, at the end, one JSON line
of what it sent of each kind.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time

import msgpack
import zmq

from xchanged.protocol import codec
from xchanged.protocol.messages import Ping
from xchanged.protocol.signing import generate_key, load_private_key, public_bytes
from xchanged.runtime.curve import curve_keypair, curve_public
from xchanged.runtime.transport import zmq_endpoint

OVERSIZED = 10 << 20


def frames(key, count: int, rng: random.Random) -> dict[str, list[bytes]]:
    pub = public_bytes(key)
    header = codec.MAGIC + bytes([codec.VERSION]) + pub
    untrusted = generate_key()
    now = time.time_ns() // 1_000_000
    stranger = codec.Encoder(untrusted, public_bytes(untrusted), now)
    replay = codec.Encoder(key, pub, now).encode(Ping(nonce=1), now)
    return {
        "random": [rng.randbytes(rng.randint(1, 600)) for _ in range(count)],
        "bad_sig": [header + msgpack.packb(["ping", 1, i, now, {"nonce": i}]) + rng.randbytes(64)
                    for i in range(count)],
        "untrusted": [stranger.encode(Ping(nonce=i), now) for i in range(count)],
        "replay": [replay] * count,
    }


def dealer(ctx: zmq.Context, target: str, server: bytes | None, identity: tuple[bytes, bytes] | None,
           immediate: bool = False) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.IMMEDIATE, 1 if immediate else 0)
    if identity is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, identity[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, identity[1])
    sock.connect(zmq_endpoint(target))
    return sock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--target-key", required=True, help="the target's Ed25519 public key, base64")
    ap.add_argument("--key", required=True, help="node.key of a node the target trusts")
    ap.add_argument("--per-kind", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=15_000.0)
    ap.add_argument("--side", type=int, default=10_000, help="frames on each refused connection")
    ap.add_argument("--oversized", type=int, default=5)
    args = ap.parse_args()
    os.nice(10)                      # a flooder on another host would not share our CPUs: yield some
    rng = random.Random(16)
    key = load_private_key(open(args.key, "rb").read())
    server = curve_public(base64.b64decode(args.target_key))
    built = frames(key, args.per_kind, rng)
    order = [frame for group in zip(*built.values()) for frame in group]      # kinds interleaved
    print("ready", flush=True)

    ctx = zmq.Context()
    sent = {kind: 0 for kind in (*built, "plaintext", "zap", "oversized")}
    kinds = list(built)
    start = time.monotonic()
    admitted = dealer(ctx, args.target, server, curve_keypair(key))
    plain = dealer(ctx, args.target, None, None)
    refused = dealer(ctx, args.target, server, curve_keypair(generate_key()))
    for i, frame in enumerate(order):
        admitted.send(frame)                                  # blocking: delivered, never dropped here
        sent[kinds[i % len(kinds)]] += 1
        if i % len(kinds) == 0 and sent["plaintext"] < args.side:
            for sock, kind in ((plain, "plaintext"), (refused, "zap")):
                try:
                    sock.send(rng.randbytes(100), flags=zmq.NOBLOCK)
                    sent[kind] += 1
                except zmq.Again:                             # queued up to SNDHWM, never delivered
                    sent[kind] += 1
        ahead = (i + 1) / args.rate - (time.monotonic() - start)
        if ahead > 0.005:
            time.sleep(ahead)
    for _ in range(args.oversized):
        big = dealer(ctx, args.target, server, curve_keypair(key))
        big.send(rng.randbytes(OVERSIZED))
        time.sleep(0.2)                                       # let it go out before the socket closes
        big.close(linger=1000)
        sent["oversized"] += 1
    admitted.close(linger=5000)                               # the last admitted frames go out first
    for sock in (plain, refused):
        sock.close(linger=0)
    ctx.term()
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
