"""What `xchanged config check` checks, and what a reload checks before it applies anything: the
config file, that the node key and every trust file it names (authorized_keys, the CA files, this
node's certificate, the revocation list: runtime/trust.py) can be read and parsed, and that its
`[executor] run_as` can work here (runtime/confine.py).

Both print the same one-line error (file, key and reason), so an operator who reloads a bad config
sees exactly what `config check` would have said.
"""

from __future__ import annotations

import os

from .config import Config, ConfigError, load_config
from .protocol.signing import TrustError, load_private_key, public_bytes


class ConfigRejected(Exception):
    """The config cannot be used; str() is the one-line error."""


def check_config(path: str | os.PathLike[str]) -> Config:
    """The validated config at `path`; ConfigRejected with the one-line error otherwise."""
    from .runtime.confine import TaskPolicy
    from .runtime.trust import Trust, TrustFileError

    try:
        cfg = load_config(path)
        key = load_private_key(cfg.node.key_file.read_bytes())
        Trust(cfg.trust, public_bytes(key), cfg.node.name)      # every trust file, read and checked
    except ConfigError as exc:
        raise ConfigRejected(str(exc)) from None
    except (TrustError, TrustFileError) as exc:
        raise ConfigRejected(f"{os.fspath(path)}: {exc}") from None
    except OSError as exc:
        raise ConfigRejected(f"{os.fspath(path)}: {exc}") from None
    if why := TaskPolicy(cfg.executor, cfg.node.state_dir).check_config():
        raise ConfigRejected(f"{os.fspath(path)}: {why}")
    return cfg
