"""`kv certs init|node|client|show`: a private CA and the certificates a secure cluster needs.

    kv certs init --out ./certs               # ca.key + ca.crt
    kv certs node n1 --out ./certs --address n1:7101 --address 10.0.0.5
    kv certs client alice --out ./certs

Exit codes: 0 ok, 1 failed (missing CA, file exists without --force, unreadable file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvstore.cli.output import console, print_json
from kvstore.cli.output import table as new_table
from kvstore.transport import certs


def _out_option(fn):
    return click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
                        default=Path("certs"), show_default=True,
                        help="Certificate directory (the CA lives here too).")(fn)


def _common(fn):
    fn = click.option("--force", is_flag=True, help="Overwrite existing files.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)
    return _out_option(fn)


def _done(path: Path, as_json: bool) -> None:
    info = certs.describe(path)
    if as_json:
        print_json(info)
        return
    table = new_table("file", "kind", "name", "names", "valid until")
    table.add_row(info["file"], info["kind"], info["name"] or "-",
                  ", ".join(info["names"]) or "-", info["not_after"])
    console.print(table)


def _run(fn, *args, **kwargs) -> Path:
    try:
        return fn(*args, **kwargs)
    except certs.CertError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


@click.group()
def certs_group() -> None:
    """Make a private CA and node/client certificates for --tls (mutual TLS)."""


@certs_group.command("init")
@_common
@click.option("--days", type=click.IntRange(1, 36500), default=certs.CA_DAYS,
              show_default=True, help="CA validity.")
def init(out: Path, force: bool, as_json: bool, days: int) -> None:
    """Create the cluster CA (ca.key, ca.crt). Keep ca.key private."""
    _done(_run(certs.init_ca, out, force=force, days=days), as_json)


@certs_group.command("node")
@click.argument("node_id")
@_common
@click.option("--address", "addresses", multiple=True, metavar="HOST[:PORT]",
              help="A host name or IP peers use to reach this node (repeatable); the node id, "
                   "localhost and 127.0.0.1 are always included.")
@click.option("--days", type=click.IntRange(1, 36500), default=certs.CERT_DAYS,
              show_default=True, help="Certificate validity.")
def node_cert(node_id: str, out: Path, force: bool, as_json: bool, addresses: tuple[str, ...],
              days: int) -> None:
    """Issue NODE_ID.key + NODE_ID.crt: the node's identity towards its peers."""
    _done(_run(certs.issue, out, certs.KIND_NODE, node_id, list(addresses), force=force,
               days=days), as_json)


@certs_group.command("client")
@click.argument("name")
@_common
@click.option("--days", type=click.IntRange(1, 36500), default=certs.CERT_DAYS,
              show_default=True, help="Certificate validity.")
def client_cert(name: str, out: Path, force: bool, as_json: bool, days: int) -> None:
    """Issue NAME.key + NAME.crt: a client identity (accepted on the client port only)."""
    _done(_run(certs.issue, out, certs.KIND_CLIENT, name, force=force, days=days), as_json)


@certs_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(file: Path, as_json: bool) -> None:
    """Print who a certificate names, for what, and until when."""
    _run(_done, file, as_json)
