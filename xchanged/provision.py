"""Creating a node's files: key pair, authorized_keys, config (used by `xchanged init` and the demo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config_template import render_default_config
from .protocol.signing import generate_key, node_id, private_key_pem, public_bytes, public_key_line


@dataclass(frozen=True)
class NodeFiles:
    directory: Path
    name: str
    node_id: str
    public_line: str

    @property
    def config(self) -> Path:
        return self.directory / "xchanged.toml"

    @property
    def key_file(self) -> Path:
        return self.directory / "node.key"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"


def init_node(directory: Path, name: str, *, config_text: str | None = None, force: bool = False) -> NodeFiles:
    """Write node.key (0600), node.pub, authorized_keys (own key) and xchanged.toml into `directory`.

    Existing files are kept unless `force`: re-running init must never silently replace an identity.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "node.key"
    if key_path.exists() and not force:
        raise FileExistsError(f"{key_path} exists; refusing to replace a node's identity (use --force)")
    key = generate_key()
    pub = public_bytes(key)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    os.chmod(key_path, 0o600)
    line = public_key_line(pub, name)
    (directory / "node.pub").write_text(line + "\n")
    auth = directory / "authorized_keys"
    if not auth.exists() or force:
        auth.write_text("# one trusted node key per line: ed25519 <base64 key> [name]\n" + line + "\n")
    conf = directory / "xchanged.toml"
    if not conf.exists() or force or config_text is not None:
        conf.write_text(config_text if config_text is not None else render_default_config(name, directory))
    return NodeFiles(directory, name, node_id(pub), line)
