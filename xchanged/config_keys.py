"""How a config key is declared, and how parsed TOML is loaded into sections of such keys.

config.py declares the schema with `setting(kind, doc, default)` fields of one dataclass per section;
this module turns TOML tables into those dataclasses knowing nothing of the particular sections, and
config_template.py writes them back out as the commented default config.

Rules (the config contract of docs/design section 3, as loading keeps it):

* Unknown sections and keys, wrong types and bad values are errors.  Loading stops at the first
  one and raises ``ConfigError``, whose one-line message names the file, the dotted key and why.
* Sections are loaded in the schema's order and keys in declaration order; an absent key gets its
  default, computed when loading (`derive`) where it depends on the host or on a section loaded
  before; then the section's ``cross_check`` sees all of its keys.
* Relative paths are relative to the config file's directory, so every loaded ``Path`` is absolute.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config_kinds import Invalid, Kind

#: Where node.key and authorized_keys are by default when a config is not read from a file, and where
#: ``config.default_config_path`` looks when ``$XCHANGED_CONFIG`` is not set.
DEFAULT_CONFIG_DIR = Path("/etc/xchanged")


class ConfigError(Exception):
    """A config is unusable: which file, which key (dotted, like ``gossip.interval``) and why."""

    def __init__(self, file: str | None, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file if self.file is not None else '<config>'}: {self.key}: {self.reason}"


@dataclass(frozen=True)
class Loading:
    """What a default computed at load time may depend on: where the config lives, and the sections
    loaded before this one (``[audit] path`` defaults into ``[node] state_dir``)."""

    base_dir: Path                     # relative paths resolve against this
    key_dir: Path                      # where node.key and authorized_keys are by default
    done: dict[str, Any]               # section name -> its loaded dataclass


@dataclass(frozen=True)
class Shown:
    """What the generated config shows for a key whose default is computed when loading: `value`
    (rendered by the key's kind) or, with `commented`, the line commented out with `value` as an
    example (the default depends on the host, so no value fits every host)."""

    value: Any
    commented: bool = False


@dataclass(frozen=True)
class Setting:
    kind: Kind
    doc: str                                           # what the key means (its comment in the generated config)
    derive: Callable[[Loading], Any] | None = None     # a default computed when loading
    shown: Shown | None = None                         # how the generated config shows a derived default
    must_exist: bool = False                           # a file that must exist (unless check_files=False)


def setting(kind: Kind, doc: str, default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            derive: Callable[[Loading], Any] | None = None, shown: Shown | None = None,
            must_exist: bool = False) -> Any:
    """A config key: a dataclass field whose metadata holds its kind, its doc and how its default is
    computed when it depends on the host or on other keys (`derive`; `default`/`factory` are then
    what a section built in code gets)."""
    return field(default=default, default_factory=factory if factory is not None else dataclasses.MISSING,
                 metadata={"setting": Setting(kind, doc, derive, shown, must_exist)})


def settings_of(section: type) -> list[tuple[str, Setting]]:
    """(key, Setting) of a section dataclass, in declaration order (the order keys are checked)."""
    return [(f.name, f.metadata["setting"]) for f in dataclasses.fields(section)]


def field_default(cls: type, name: str) -> Any:
    """The default dataclass `cls` gives field `name`. Keys that feed the protocol core take theirs
    from its settings classes (NodeSettings, GossipSettings), so each default lives in one place."""
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def longer_than(values: dict[str, Any], key: str, other: str, other_name: str) -> None:
    """Cross-check: duration `key` must be longer than duration `other` (named `other_name`)."""
    if values[key] <= values[other]:
        raise Invalid(f"must be longer than {other_name} ({values[key]:g}s <= {values[other]:g}s)", key=key)


# ---------------------------------------------------------------------------------------------
# Loading


def _unknown(name: str, known: Any, what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {what} (did you mean {close[0]!r}?)" if close else f"unknown {what}"


def _load_section(section: type, table: dict[str, Any], ctx: Loading) -> Any:
    """A section's dataclass from its TOML table; an Invalid raised here names the key."""
    keys = settings_of(section)
    known = [key for key, _ in keys]
    for key in table:
        if key not in known:
            raise Invalid(_unknown(key, known, "key"), key=key)
    values: dict[str, Any] = {}
    for key, s in keys:
        value = Kind.DEFAULT
        if key in table:
            try:
                value = s.kind.load(table[key], ctx.base_dir)
            except Invalid as exc:
                raise Invalid(exc.reason, key=key + exc.at) from None
        if value is Kind.DEFAULT:
            if s.derive is not None:
                try:
                    value = s.derive(ctx)
                except Invalid as exc:
                    raise Invalid(exc.reason, key=key) from None
            else:
                value = field_default(section, key)
        values[key] = value
    cross_check = getattr(section, "cross_check", None)
    if cross_check is not None:
        cross_check(values)
    return section(**values)


def load_sections(data: dict[str, Any], sections: dict[str, type], *, source: str | None, base_dir: Path | None,
                  check_files: bool) -> dict[str, Any]:
    """Section name -> its loaded dataclass, for each of `sections`, from ``data`` (parsed TOML); see
    config.config_from_dict for the arguments."""
    if not isinstance(data, dict):
        raise ConfigError(source, "<config>", f"expected a table, got {type(data).__name__}")
    for name, table in data.items():
        if name not in sections:
            if not isinstance(table, dict):
                owners = [f"[{sec}]" for sec, cls in sections.items() if name in cls.__dataclass_fields__]
                hint = f"it belongs in {' or '.join(owners)}" if owners else "settings belong in a [section]"
                raise ConfigError(source, name, f"unknown top-level key ({hint})")
            raise ConfigError(source, name, _unknown(name, sections, "section"))
        if not isinstance(table, dict):
            raise ConfigError(source, name, f"expected a [{name}] table, got {table!r}")
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    ctx = Loading(base, base if base_dir is not None else DEFAULT_CONFIG_DIR, {})
    for name, section in sections.items():
        try:
            ctx.done[name] = _load_section(section, data.get(name, {}), ctx)
        except Invalid as exc:
            raise ConfigError(source, f"{name}.{exc.key}", exc.reason) from None
    if check_files:
        for name, section in sections.items():
            for key, s in settings_of(section):
                value = getattr(ctx.done[name], key)
                for i, path in enumerate(value if isinstance(value, tuple) else (value,)):
                    if s.must_exist and path is not None:
                        _check_file(source, f"{name}.{key}" + (f"[{i}]" if isinstance(value, tuple) else ""), path)
    return ctx.done


def _check_file(file: str | None, key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(file, key, f"file not found: {path}")
    if not path.is_file():
        raise ConfigError(file, key, f"not a regular file: {path}")


def read_toml(file: str) -> dict[str, Any]:
    """The parsed TOML of ``file``; ConfigError if it cannot be read or parsed."""
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "not found") from None
    except IsADirectoryError:
        raise ConfigError(file, "<file>", "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(file, "<file>", "permission denied") from None
    except OSError as e:
        raise ConfigError(file, "<file>", f"cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "<syntax>", str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, "<syntax>", f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
