"""`xchanged ca init | sign | revoke | show`: a cluster CA, so a new host joins touching only itself."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..protocol.certs import Certificate
from .common import Exit, json_option, print_json


@click.group("ca")
def ca_group() -> None:
    """A cluster certificate authority: nodes trusting it accept each other's certificates."""


@ca_group.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="where to write ca.key (0600), ca.pub and ca.serial")
@click.option("--name", default="xchanged-ca", show_default=True, help="the CA's name (in ca.pub)")
@click.option("--force", is_flag=True, help="replace an existing CA key (its certificates become worthless)")
def ca_init(directory: Path, name: str, force: bool) -> None:
    """Create the cluster's CA key. List the ca.pub in every node's [trust] ca."""
    from ..ca import CAError, init_ca

    try:
        line = init_ca(directory, name, force)
    except (CAError, OSError) as exc:
        raise Exit(str(exc), 2) from None
    click.echo(f"CA {name} created in {directory.absolute()}")
    click.echo(f"public key (copy {directory / 'ca.pub'} to each node and list it in [trust] ca):\n{line}")


@ca_group.command("sign")
@click.argument("node_pub", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="node name in the certificate (default: the name in NODE_PUB)")
@click.option("--expires", default="90d", show_default=True, help="validity, like 90d, 12h")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="the CA's directory (ca.key)")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="certificate file (default: NODE_PUB with the suffix .cert)")
@json_option
def ca_sign(node_pub: Path, name: str | None, expires: str, ca_dir: Path, out: Path | None, as_json: bool) -> None:
    """Issue a certificate for the node key in NODE_PUB (a node's node.pub)."""
    from ..ca import CAError, parse_validity, sign_node

    try:
        validity = parse_validity(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    try:
        cert, path = sign_node(ca_dir, node_pub, name, validity, out)
    except (CAError, OSError) as exc:
        raise Exit(str(exc), 2) from None
    if as_json:
        print_json(dict(_cert_doc(cert), file=str(path)))
        return
    click.echo(f"wrote {path}: {cert.describe()}")
    click.echo("on that node: [trust] certificate = \"<this file>\" and [trust] ca = [\"<ca.pub>\"]")


@ca_group.command("revoke")
@click.option("--serial", type=int, default=None, help="revoke the certificate with this serial")
@click.option("--key", "node_pub", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="revoke every certificate of the key in this node.pub")
@click.option("--list", "list_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the revocation list to add to (each node names a copy in [trust] revoked)")
def ca_revoke(serial: int | None, node_pub: Path | None, list_path: Path) -> None:
    """Add a certificate (by serial) or a node key to a revocation list."""
    from ..ca import CAError, revoke

    try:
        line = revoke(list_path, serial, node_pub)
    except (CAError, OSError) as exc:
        raise Exit(str(exc), 2) from None
    click.echo(f"{list_path}: added {line}")
    click.echo("copy it to every node ([trust] revoked); they re-read it when it changes")


@ca_group.command("show")
@click.argument("cert_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def ca_show(cert_file: Path, as_json: bool) -> None:
    """Print what a certificate says (no check of its signature: that needs the CA's key)."""
    from ..ca import CAError, read_cert

    try:
        cert = read_cert(cert_file)
    except CAError as exc:
        raise Exit(str(exc), 2) from None
    if as_json:
        print_json(_cert_doc(cert))
    else:
        click.echo(cert.describe() + (" (expired)" if cert.not_after < time.time() else ""))


def _cert_doc(cert: Certificate) -> dict:
    from ..protocol.signing import fingerprint

    return {"name": cert.name, "node_id": cert.node_id, "serial": cert.serial, "not_before": cert.not_before,
            "not_after": cert.not_after, "ca": fingerprint(cert.ca_key), "expired": cert.not_after < time.time()}


COMMANDS = [ca_group]
