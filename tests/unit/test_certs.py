"""The private CA (`kv certs`) and TLS file loading with reload."""

from __future__ import annotations

import shutil

import pytest

from kvstore.cli.main import cli
from kvstore.transport import certs
from kvstore.transport.tls import TlsError, TlsFiles


def test_issue_and_identity(tmp_path):
    certs.init_ca(tmp_path)
    node = certs.issue(tmp_path, certs.KIND_NODE, "n1", ["10.1.2.3:7001", "db.example"])
    client = certs.issue(tmp_path, certs.KIND_CLIENT, "alice")
    assert certs.identity_of_pem(node.read_bytes()) == certs.Identity("node", "n1")
    assert certs.identity_of_pem(client.read_bytes()) == certs.Identity("client", "alice")
    assert certs.identity_of_pem((tmp_path / "ca.crt").read_bytes()) is None
    names = certs.describe(node)["names"]
    assert {"n1", "localhost", "127.0.0.1", "10.1.2.3", "db.example"} <= set(names)
    assert (tmp_path / "n1.key").stat().st_mode & 0o077 == 0  # private keys are private
    TlsFiles(tmp_path, "n1")
    TlsFiles(tmp_path, "alice")


def test_refusals(tmp_path):
    with pytest.raises(certs.CertError, match="kv certs init"):
        certs.issue(tmp_path, certs.KIND_NODE, "n1")
    certs.init_ca(tmp_path)
    with pytest.raises(certs.CertError, match="--force"):
        certs.init_ca(tmp_path)
    for bad in ("", "a b", "../x", "ca", "x" * 64):
        with pytest.raises(certs.CertError, match="name"):
            certs.issue(tmp_path, certs.KIND_CLIENT, bad)
    with pytest.raises(TlsError, match="cannot read"):
        TlsFiles(tmp_path, "n9")


def test_mismatched_files_are_refused_and_reload_keeps_the_old(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    certs.init_ca(a)
    certs.init_ca(b)
    certs.issue(a, certs.KIND_NODE, "n1")
    certs.issue(b, certs.KIND_NODE, "n1")
    files = TlsFiles(a, "n1")
    old = files.chain
    shutil.copy(b / "n1.key", a / "n1.key")  # a key of another certificate
    with pytest.raises(TlsError, match="does not belong"):
        TlsFiles(a, "n1")
    assert files.reload() is False and files.chain == old and files.generation == 0
    shutil.copy(b / "n1.crt", a / "n1.crt")  # now a pair, but from another CA
    with pytest.raises(TlsError, match="not issued by the CA"):
        TlsFiles(a, "n1")
    certs.issue(a, certs.KIND_NODE, "n1", force=True)  # rotation under the same CA
    assert files.reload() is True and files.chain != old and files.generation == 1
    assert files.reload() is False


def test_cli(tmp_path):
    from click.testing import CliRunner

    runner = CliRunner()
    out = str(tmp_path / "c")
    assert runner.invoke(cli, ["certs", "init", "--out", out]).exit_code == 0
    res = runner.invoke(cli, ["certs", "node", "n1", "--out", out, "--json"])
    assert res.exit_code == 0 and '"kind": "node"' in res.output
    res = runner.invoke(cli, ["certs", "client", "alice", "--out", out])
    assert res.exit_code == 0 and "alice" in res.output
    res = runner.invoke(cli, ["certs", "client", "alice", "--out", out])
    assert res.exit_code == 1 and "--force" in res.output
    res = runner.invoke(cli, ["certs", "show", str(tmp_path / "c" / "alice.crt"), "--json"])
    assert res.exit_code == 0 and '"name": "alice"' in res.output


def test_a_reload_reaches_every_listener(tmp_path):
    """A node with separate client and peer ports has two server credentials on one
    TlsFiles: after a reload, each listener serves the new certificate (both used to share
    one 'last served' mark, so only the first listener to handshake switched)."""
    import ssl
    from concurrent import futures

    import grpc

    certs.init_ca(tmp_path)
    certs.issue(tmp_path, certs.KIND_NODE, "n1")
    files = TlsFiles(tmp_path, "n1")
    servers, ports = [], []
    for require in (False, True):  # the client port, then the peer port
        server = grpc.server(futures.ThreadPoolExecutor(1))
        ports.append(server.add_secure_port("127.0.0.1:0", files.server_credentials(require)))
        server.start()
        servers.append(server)
    try:
        def served(port: int) -> str:
            return ssl.get_server_certificate(("127.0.0.1", port), timeout=10)

        old = [served(p) for p in ports]
        assert old[0] == old[1]
        certs.issue(tmp_path, certs.KIND_NODE, "n1", force=True)
        assert files.reload() is True
        new = served(ports[1])  # the peer port handshakes first ...
        assert new != old[1]
        assert served(ports[0]) == new  # ... and the client port switches too
        assert served(ports[1]) == new and served(ports[0]) == new
    finally:
        for server in servers:
            server.stop(None)
