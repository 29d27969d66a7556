"""`xchanged audit ...`: read, check, export and prove the award log; show forks peers found.

show, verify, export and prove read the log file directly (from the config's `[audit] path`, or a
path given), so they work offline, on a copied log, and next to a running daemon: readers take no
lock and stop quietly at a record still being written. `repair` cuts a tail lost in a crash, as the
daemon does at start, so it takes the log's lock (the daemon must be stopped). `evidence` and `head`
ask the running daemon.

Exit codes: 0 success; 1 the log does not verify (verify), the entry can't be proved (prove), or the
damage is not a lost tail and was left alone (repair);
2 usage, config or file error; 3 daemon not reachable (evidence, head).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from datetime import datetime
from pathlib import Path

import click

from ..config import ConfigError, default_config_path, load_config
from ..protocol.audit_format import parse_head
from ..protocol.merkle import MerkleAccumulator, verify_inclusion
from ..protocol.signing import TrustError, TrustStore, load_private_key, node_id, public_bytes
from ..runtime import audit_docs
from ..runtime.audit import (
    HEAD_SUFFIX,
    AuditCorrupted,
    AuditError,
    AuditLocked,
    AuditRecord,
    read_records,
    verify_log,
)
from ..runtime.audit import repair as repair_log
from .common import Exit, call_daemon, config_option, json_option

# -- where things are -----------------------------------------------------------------------------


class Context:
    """The log path, the trusted keys (for names and for verifying), and this node's public key."""

    def __init__(self, config: str | None, path: str | None, need_config: bool):
        self.cfg = None
        self.trust = TrustStore({})
        self.own_key: bytes | None = None
        cfg_path = Path(config) if config else default_config_path()
        if config or need_config or cfg_path.exists():
            try:
                self.cfg = load_config(cfg_path, check_files=False)
            except ConfigError as exc:
                if need_config or config:
                    raise Exit(str(exc), 2) from None
        if self.cfg is not None:
            try:
                self.trust = TrustStore.parse(self.cfg.trust.authorized_keys.read_text(),
                                              str(self.cfg.trust.authorized_keys))
            except (OSError, TrustError):
                pass
            try:
                self.own_key = public_bytes(load_private_key(self.cfg.node.key_file.read_bytes()))
            except (OSError, TrustError):
                pub = self.cfg.node.key_file.with_suffix(".pub")
                try:
                    self.own_key = read_public_key(pub)
                except (OSError, ValueError):
                    pass
        if path:
            self.path = Path(path)
        elif self.cfg is not None:
            self.path = self.cfg.audit.path
        else:
            raise Exit(f"no audit log given and no config at {cfg_path}", 2)
        self.names = {node_id(k): n for k, n in self.trust.keys.items()}
        if self.own_key is not None and self.cfg is not None:
            self.names.setdefault(node_id(self.own_key), self.cfg.node.name)

    def name(self, nid: str | None) -> str:
        return self.names.get(nid or "", "") or (nid or "")

    def records(self) -> list[AuditRecord]:
        try:
            return list(read_records(self.path))
        except FileNotFoundError:
            raise Exit(f"no audit log at {self.path}", 2) from None
        except AuditCorrupted as exc:
            raise Exit(f"{exc} (run `xchanged audit verify` for details)", 1) from None

    def key_for(self, nid: str | None) -> bytes | None:
        for key in self.trust.keys:
            if node_id(key) == nid:
                return key
        return self.own_key


def read_public_key(path: Path) -> bytes:
    """A node.pub / authorized_keys line (`ed25519 <base64> [name]`), or a PEM private or public key."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return public_bytes(load_private_key(data))
    if b"PUBLIC KEY" in data:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        return public_bytes(load_pem_public_key(data))
    try:
        store = TrustStore.parse(data.decode(), str(path))
    except (TrustError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not store.keys:
        raise ValueError(f"{path}: no key found")
    return next(iter(store.keys))


def _head_of(path: Path, head_file: Path | None = None):
    """The log's signed head (from `head_file`, default PATH.head), or None if absent or unreadable."""
    try:
        return parse_head((head_file or Path(str(path) + HEAD_SUFFIX)).read_bytes())
    except (OSError, ValueError):
        return None


# -- formatting ---------------------------------------------------------------------------------


def record_doc(record: AuditRecord, ctx: Context) -> dict:
    return audit_docs.record_doc(record, ctx.name, ctx.trust)


def parse_since(text: str, now_ms: int) -> int:
    """`--since`: epoch ms, ISO 8601, or an age like 90s, 10m, 2h, 1d."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now_ms - int(float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000)
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("expected epoch ms, ISO 8601 or an age like 10m", param_hint="--since") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)


# -- commands -----------------------------------------------------------------------------------


@click.group("audit")
def audit() -> None:
    """The tamper-evident award log: show, verify, export, prove; forks found in peers' logs."""


@audit.command("show")
@config_option
@click.option("--log", "path", type=click.Path(dir_okay=False), help="log file (default: the config's)")
@click.option("--task", default=None, help="only entries of this task")
@click.option("--node", default=None, help="only entries naming this node (id or name) as manager or contractor")
@click.option("--since", default=None, help="only entries from then on: epoch ms, ISO 8601, or an age like 10m")
@json_option
def show(config, path, task, node, since, as_json) -> None:
    """Entries of the local award log (offline: no daemon needed)."""
    ctx = Context(config, path, need_config=path is None)
    since_ms = parse_since(since, int(time.time() * 1000)) if since else None
    docs = []
    for record in ctx.records():
        e = record.entry
        if task and e.get("task") != task:
            continue
        if node and node not in (e.get("manager"), e.get("contractor"), ctx.name(e.get("manager")),
                                 ctx.name(e.get("contractor"))):
            continue
        if since_ms is not None and int(e.get("time_ms") or 0) < since_ms:
            continue
        docs.append(record_doc(record, ctx))
    if task and path is None:
        docs = _with_managers_records(ctx, config, task, docs, node, since_ms)
    if as_json:
        click.echo(json.dumps(docs, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    merged = any("log" in d for d in docs)
    table = Table("#", "time", "event", "task", "att", "manager", "contractor", "detail", *(["log"] if merged else []))
    for d in docs:
        when = datetime.fromtimestamp(d["time_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S") if d.get("time_ms") else "-"
        detail = []
        if d.get("score") is not None:
            detail.append(f"score {d['score']}")
        if d.get("outcome"):
            detail.append(f"{d['outcome']} {d.get('exit_code')}")
        if d.get("reason"):
            detail.append(str(d["reason"]))
        if isinstance(d.get("message"), dict):
            m = d["message"]
            detail.append(f"signed {m.get('type')} by {ctx.name(m.get('signer'))}" if m["valid"]
                          else f"BAD embedded message: {m.get('error')}")
        table.add_row(str(d["index"]), when, d.get("event", ""), d.get("task", ""), str(d.get("attempt", "")),
                      d.get("manager_name", ""), d.get("contractor_name", ""), "; ".join(detail),
                      *([d.get("log", "")] if merged else []))
    Console().print(table)


def _with_managers_records(ctx: Context, config: str | None, task: str, docs: list[dict], node: str | None,
                           since_ms: int | None) -> list[dict]:
    """From any host: the running daemon asks the task's manager for its records of the task; when
    that is another node, they join this log's (each record's `log` says whose log it is in)."""
    from ..client import Client, DaemonUnreachable, RequestFailed

    try:
        with Client(config=config) as client:
            theirs = client.audit_task(task)
    except DaemonUnreachable:
        return docs                                  # offline: this log only, as before
    except (RequestFailed, ConfigError) as exc:
        click.echo(f"(the manager's records of {task} are not shown: {exc})", err=True)
        return docs
    own = node_id(ctx.own_key) if ctx.own_key else ""
    if theirs.get("node_id") == own:
        return docs
    own_name = ctx.name(own) if own else ""
    kept = [d for d in theirs.get("records", [])
            if (not node or node in (d.get("manager"), d.get("contractor"), d.get("manager_name"),
                                     d.get("contractor_name")))
            and (since_ms is None or int(d.get("time_ms") or 0) >= since_ms)]
    return [dict(d, log=own_name) for d in docs] + [dict(d, log=theirs.get("node", "")) for d in kept]


@audit.command("verify")
@config_option
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False),
              help="the log's node public key (node.pub line or PEM); default: from the config/authorized_keys")
@click.option("--head", "head_file", type=click.Path(dir_okay=False), help="signed head (default: PATH.head)")
@json_option
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def verify(config, key_file, head_file, as_json, path) -> None:
    """Check every frame, link, signature and the signed head of a log (offline; exit 0 only if all pass)."""
    ctx = Context(config, path, need_config=path is None and key_file is None)
    if not ctx.path.exists():
        raise Exit(f"no audit log at {ctx.path}", 2)
    head = _head_of(ctx.path, Path(head_file) if head_file else None)
    key = _log_key(ctx, key_file, head)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    report = verify_log(ctx.path, Ed25519PublicKey.from_public_bytes(key), head_path=head_file)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "path": str(ctx.path), "records": report.size,
                               "first_bad_index": report.first_bad_index, "message": report.message,
                               "key_node_id": node_id(key),
                               "head": report.head.to_dict() if report.head else None}, indent=2, sort_keys=True))
    if not report.ok:
        if not as_json:
            click.echo(f"{ctx.path}: FAILED: {report.message}", err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo(f"{ctx.path}: OK: {report.message}")


@audit.command("repair")
@config_option
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False),
              help="the log's node public key (node.pub line or PEM); default: from the config/authorized_keys")
@json_option
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def repair(config, key_file, as_json, path) -> None:
    """Cut a tail lost in a crash (torn or zero-filled, after the signed head), as the daemon does at
    start; the cut bytes are kept in PATH.cut-<time_ms>. Refuses (exit 1) damage the head covers."""
    ctx = Context(config, path, need_config=path is None and key_file is None)
    if not ctx.path.exists():
        raise Exit(f"no audit log at {ctx.path}", 2)
    head = _head_of(ctx.path)
    key = _log_key(ctx, key_file, head)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        cut = repair_log(ctx.path, Ed25519PublicKey.from_public_bytes(key), head.node_id if head else None)
    except AuditLocked:
        raise Exit(f"{ctx.path} is open in a running daemon: stop it first (a daemon repairs its own "
                   "log when it starts)", 2) from None
    except AuditCorrupted as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "path": str(ctx.path), "cut": None, "message": str(exc)},
                                  indent=2, sort_keys=True))
        raise Exit(f"{exc}. Not repaired: this is not a tail lost in a crash (inspect it with "
                   f"`xchanged audit verify`; keep the file as evidence)", 1) from None
    except (AuditError, OSError) as exc:
        raise Exit(f"cannot repair {ctx.path}: {exc}", 2) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "path": str(ctx.path), "cut": dataclasses.asdict(cut) if cut else None,
                               "message": cut.describe() if cut else "nothing to cut"}, indent=2, sort_keys=True))
    elif cut is None:
        click.echo(f"{ctx.path}: OK: the log is whole, nothing to cut")
    else:
        click.echo(f"{ctx.path}: repaired: {cut.describe()}")


def _log_key(ctx: Context, key_file: str | None, head) -> bytes:
    """The public key of the log's node: --key, else the trusted key of the head's node id."""
    try:
        if key_file:
            key = read_public_key(Path(key_file))
        else:
            key = ctx.key_for(head.node_id if head else None)
    except (OSError, ValueError, TrustError) as exc:
        raise Exit(f"cannot read the key: {exc}", 2) from None
    if key is None:
        raise Exit("no public key to verify with: give --key node.pub", 2)
    return key


@audit.command("export")
@config_option
@click.option("--log", "path", type=click.Path(dir_okay=False), help="log file (default: the config's)")
def export(config, path) -> None:
    """Every record as JSON lines (bytes as hex), then the signed head: {"head": ...}."""
    ctx = Context(config, path, need_config=path is None)
    for record in ctx.records():
        click.echo(json.dumps({"index": record.index, "prev": record.prev.hex(), "sig": record.signature.hex(),
                               "leaf_hash": record.leaf_hash().hex(), "entry": audit_docs.jsonable(record.entry)},
                              sort_keys=True))
    head = _head_of(ctx.path)
    click.echo(json.dumps({"head": head.to_dict() if head else None}, sort_keys=True))


@audit.command("prove")
@config_option
@click.option("--log", "path", type=click.Path(dir_okay=False), help="log file (default: the config's)")
@click.argument("entry", type=int)
def prove(config, path, entry) -> None:
    """Inclusion proof (RFC 9162) of entry ENTRY in the tree of the log's signed head, as JSON."""
    ctx = Context(config, path, need_config=path is None)
    records = ctx.records()
    head = _head_of(ctx.path)
    if head is None:
        raise Exit(f"no readable signed head at {ctx.path}{HEAD_SUFFIX}", 2)
    if not 0 <= entry < head.size:
        raise Exit(f"entry {entry} is not covered by the signed head (size {head.size}); "
                   "the daemon signs a new head within a gossip interval", 1)
    if len(records) < head.size:
        raise Exit(f"the log has {len(records)} records but its head covers {head.size}", 1)
    tree = MerkleAccumulator(r.leaf_hash() for r in records[: head.size])
    proof = tree.inclusion_proof(entry, head.size)
    leaf = records[entry].leaf_hash()
    ok = verify_inclusion(leaf, entry, head.size, proof, head.root)
    click.echo(json.dumps({"index": entry, "leaf_hash": leaf.hex(), "tree_size": head.size,
                           "root": head.root.hex(), "proof": [h.hex() for h in proof], "verified": ok,
                           "head": head.to_dict(), "record": record_doc(records[entry], ctx)},
                          indent=2, sort_keys=True))
    if not ok:
        raise SystemExit(1)


@audit.command("evidence")
@config_option
@json_option
@click.argument("node", required=False, default="")
def evidence(config, as_json, node) -> None:
    """What the running daemon saw of NODE's (or every peer's) audit heads, with evidence of a fork."""
    from ..client import Client

    def evidence():
        with Client(config=config) as client:
            return client.audit_evidence(node)
    docs = call_daemon(evidence)
    if node and not docs:
        raise Exit(f"no audit heads seen from {node}", 1)
    if as_json or node:
        click.echo(json.dumps(docs if not node else docs[0], indent=2, sort_keys=True))
        return
    for d in docs:
        size = d["head"]["size"] if d.get("head") else "-"
        line = f"{d.get('name') or '-':12} {d['node_id']}  {d['status']:9} head size {size}"
        if d.get("evidence"):
            line += f"  FORK: {d['evidence']['reason']}"
        click.echo(line)


@audit.command("head")
@config_option
@json_option
def head(config, as_json) -> None:
    """The running daemon's signed audit head (what /api/audit/head serves), and the other nodes' as it
    checked them."""
    from ..client import Client

    def ask():
        with Client(config=config) as client:
            return client.audit_head()
    doc = call_daemon(ask)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    h = doc["head"]
    click.echo(f"{doc['node']} {doc['node_id']}: {doc['records']} records; "
               + (f"signed head size {h['size']} root {h['root']} at {h['time_ms']}" if h else "no signed head yet"))
    for p in doc["peers"]:
        click.echo(f"  {p.get('name') or '-':12} {p['node_id']}  {p['status']}")


COMMANDS = [audit]
