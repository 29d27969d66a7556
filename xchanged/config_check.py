"""What `xchanged config check` checks, and what a reload checks before it applies anything: the
config file, and that the node key and the authorized keys it names can be read and parsed.

Both print the same one-line error (file, key and reason), so an operator who reloads a bad config
sees exactly what `config check` would have said.
"""

from __future__ import annotations

import os

from .config import Config, ConfigError, load_config
from .protocol.signing import TrustError, TrustStore, load_private_key


class ConfigRejected(Exception):
    """The config cannot be used; str() is the one-line error."""


def check_config(path: str | os.PathLike[str]) -> Config:
    """The validated config at `path`; ConfigRejected with the one-line error otherwise."""
    try:
        cfg = load_config(path)
        load_private_key(cfg.node.key_file.read_bytes())
        TrustStore.parse(cfg.trust.authorized_keys.read_text(), str(cfg.trust.authorized_keys))
    except ConfigError as exc:
        raise ConfigRejected(str(exc)) from None
    except TrustError as exc:
        raise ConfigRejected(f"{os.fspath(path)}: {exc}") from None
    except OSError as exc:
        raise ConfigRejected(f"{os.fspath(path)}: {exc}") from None
    return cfg
