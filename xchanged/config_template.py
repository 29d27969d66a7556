"""The commented default config that `xchanged init` writes: every key of the schema in config.py,
at its default, under its doc. `config/xchanged.example.toml` is this text for an example node
(a test keeps them identical; regenerate it with `python -m xchanged.config_template`).

It must load back cleanly through `load_config` (a test checks that round trip).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .config import SECTIONS, config_from_dict
from .config_keys import settings_of

#: The example node `config/xchanged.example.toml` is written for.
EXAMPLE_NAME = "gpu-07"
EXAMPLE_DIR = Path("/etc/xchanged")
#: Longest comment line written.
WIDTH = 100

HEADER = """\
# xchanged node configuration.
# Every key is shown at its default; change what you need and delete the rest if you like.
# Durations need a unit (us, ms, s, m, h, d). Sizes: K, M, G, T (and KiB, MiB, ...) are 1024-based,
# KB, MB, GB are 1000-based. Relative paths are relative to this file's directory.
# Check a change with: xchanged config check -c THIS_FILE
"""


def render_default_config(name: str, directory: Path) -> str:
    """A commented TOML config for node ``name`` with every key at its default.

    ``node.key_file`` and ``trust.authorized_keys`` point into ``directory`` (made absolute).
    The text loads back with ``load_config`` once those files exist.
    """
    directory = Path(directory).absolute()
    defaults = config_from_dict({"node": {"name": name}}, base_dir=directory, check_files=False)
    lines = [HEADER]
    for section_name, section in SECTIONS.items():
        lines.append(f"# {section.__doc__.strip()}")
        lines.append(f"[{section_name}]")
        values = getattr(defaults, section_name)
        for key, s in settings_of(section):
            lines += textwrap.wrap(s.doc, WIDTH, initial_indent="# ", subsequent_indent="# ")
            if s.shown is None:
                lines.append(f"{key} = {s.kind.render(getattr(values, key))}")
            else:
                lines.append(f"{'# ' if s.shown.commented else ''}{key} = {s.kind.render(s.shown.value)}")
        lines.append("")
    return "\n".join(lines)


def example_config() -> str:
    """The text of config/xchanged.example.toml."""
    return render_default_config(EXAMPLE_NAME, EXAMPLE_DIR)


if __name__ == "__main__":
    print(example_config(), end="")
