"""A cluster certificate authority on disk: the files behind `xchanged ca init | sign | revoke | show`.

    ca_dir/ca.key      the CA's Ed25519 private key (mode 0600; keep it off the cluster's hosts if you can)
    ca_dir/ca.pub      its public key line (`ed25519 <base64> <name>`): list it in every node's [trust] ca
    ca_dir/ca.serial   the last serial issued (each certificate gets the next one)
    ca_dir/issued.log  one line per certificate issued: serial, node, key, validity (for revoking later)

Enrolling a host: copy its node.pub to the CA, `xchanged ca sign node.pub --name N --expires 90d`,
copy the certificate back and name it in that host's `[trust] certificate`. Nothing changes on the
other hosts. Revoking: `xchanged ca revoke --serial S --list revoked` adds a line to a revocation list,
which every node names in `[trust] revoked` (and re-reads when it changes).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .protocol.certs import CertError, Certificate, cert_file_text, issue, parse_cert_file
from .protocol.signing import (
    TrustError,
    TrustStore,
    generate_key,
    load_private_key,
    private_key_pem,
    public_bytes,
    public_key_line,
)
from .units import parse_duration

_DAYS = re.compile(r"\s*([0-9]+)\s*d\s*")


class CAError(Exception):
    """A CA operation cannot be done (the message says why; the CLI exits 2)."""


@dataclass(frozen=True)
class CAFiles:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def pub(self) -> Path:
        return self.directory / "ca.pub"

    @property
    def serial(self) -> Path:
        return self.directory / "ca.serial"

    @property
    def issued(self) -> Path:
        return self.directory / "issued.log"


def parse_validity(text: str) -> int:
    """Seconds of a validity like "90d", "12h" or "30m" (days allowed on top of the usual units)."""
    m = _DAYS.fullmatch(text)
    seconds = int(m.group(1)) * 86400 if m else parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"validity must be positive, got {text!r}")
    return int(seconds)


def init_ca(directory: Path, name: str, force: bool = False) -> str:
    """Create a CA key pair in `directory`; returns its public key line. Never replaces a CA key
    unless `force` (that would orphan every certificate it issued)."""
    files = CAFiles(Path(directory).absolute())
    files.directory.mkdir(parents=True, exist_ok=True)
    if files.key.exists() and not force:
        raise CAError(f"{files.key} exists; refusing to replace a CA key (use --force)")
    key = generate_key()
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    os.chmod(files.key, 0o600)
    line = public_key_line(public_bytes(key), name)
    files.pub.write_text(line + "\n")
    files.serial.write_text("0\n")
    return line


def read_node_pub(path: Path) -> tuple[bytes, str]:
    """(key, name) of the first key line of a node.pub (or authorized_keys-style) file."""
    try:
        keys = TrustStore.parse(Path(path).read_text(), str(path)).keys
    except OSError as exc:
        raise CAError(f"{path}: {exc.strerror or exc}") from None
    except TrustError as exc:
        raise CAError(str(exc)) from None
    if not keys:
        raise CAError(f"{path}: no key line")
    key, name = next(iter(keys.items()))
    return key, name


def sign_node(ca_dir: Path, node_pub: Path, name: str | None, validity_s: int, out: Path | None = None,
              not_before: int | None = None) -> tuple[Certificate, Path]:
    """Issue a certificate for the key in `node_pub`; write it to `out` (default: next to node_pub,
    as <stem>.cert). Returns it and where it was written."""
    files = CAFiles(Path(ca_dir).absolute())
    try:
        ca = load_private_key(files.key.read_bytes())
    except OSError as exc:
        raise CAError(f"{files.key}: {exc.strerror or exc} (run `xchanged ca init` first)") from None
    except TrustError as exc:
        raise CAError(f"{files.key}: {exc}") from None
    key, pub_name = read_node_pub(node_pub)
    name = name or pub_name
    if not name:
        raise CAError(f"{node_pub} names no node: give --name")
    start = int(time.time()) - 300 if not_before is None else not_before   # five minutes of clock skew
    serial = _next_serial(files)
    try:
        cert = issue(ca, key, name, serial, start, start + validity_s)
    except ValueError as exc:
        raise CAError(str(exc)) from None
    out = Path(out) if out is not None else Path(node_pub).with_suffix(".cert")
    out.write_text(cert_file_text(cert))
    with open(files.issued, "a") as log:
        log.write(f"serial {cert.serial} # {cert.describe()}, key {public_key_line(key)}\n")
    return cert, out


def _next_serial(files: CAFiles) -> int:
    """The next serial, under a lock, so two `ca sign` at once never issue the same one."""
    with open(files.serial, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read().strip() or "0"
        if not text.isdigit():
            raise CAError(f"{files.serial}: not a number")
        serial = int(text) + 1
        f.seek(0)
        f.truncate()
        f.write(f"{serial}\n")
    return serial


def revoke(list_path: Path, serial: int | None = None, node_pub: Path | None = None, note: str = "") -> str:
    """Append a revocation to the list at `list_path` (created if missing); returns the line."""
    if (serial is None) == (node_pub is None):
        raise CAError("revoke one thing: --serial N or --key node.pub")
    if serial is not None:
        line = f"serial {serial}"
    else:
        key, name = read_node_pub(node_pub)
        line = public_key_line(key)
        note = note or name
    if note:
        line += f"  # {note}"
    with open(list_path, "a") as f:
        f.write(line + "\n")
    return line


def read_cert(path: Path) -> Certificate:
    try:
        return Certificate.decode(parse_cert_file(Path(path).read_text(), str(path)))
    except OSError as exc:
        raise CAError(f"{path}: {exc.strerror or exc}") from None
    except CertError as exc:
        raise CAError(str(exc)) from None
