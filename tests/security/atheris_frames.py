"""Coverage-guided fuzzing of the frame gate with atheris (libFuzzer), where atheris installs.

    python tests/security/atheris_frames.py -runs=20000          # what test_atheris.py runs
    python tests/security/atheris_frames.py                      # until stopped, for a longer hunt

Every input goes through the gate twice: as a frame on its own, and as the payload of a frame signed
by a trusted key (so it reaches the msgpack and body parsers). Anything but MessageReceived or
FrameDropped coming out, or any exception, is a crash libFuzzer reports with the input that caused it.
"""

import sys

import atheris

with atheris.instrument_imports():
    from xchanged.protocol import codec
    from xchanged.protocol.events import FrameDropped, MessageReceived
    from xchanged.protocol.inbound import FrameGate
    from xchanged.protocol.signing import TrustStore, generate_key, public_bytes, sign

KEY = generate_key()
PUB = public_bytes(KEY)
NOW_MS = 1_800_000_000_000


def one_input(data: bytes) -> None:
    gate = FrameGate(TrustStore({PUB: "fuzzer"}), lambda key, cert, wall: "bad_certificate")
    header = codec.MAGIC + bytes([codec.VERSION]) + PUB
    for frame in (data, header + data + sign(KEY, header + data)):
        for event in gate.admit(frame, NOW_MS):
            if not isinstance(event, (MessageReceived, FrameDropped)):
                raise AssertionError(event)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
