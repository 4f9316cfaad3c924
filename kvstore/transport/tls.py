"""TLS for gRPC from a certificate directory (see `certs.py` for its layout), with reload.

`TlsFiles(dir, name)` reads ca.crt, NAME.crt and NAME.key. Server credentials are dynamic:
gRPC asks for the current certificate on every new handshake, so `reload()` (on SIGHUP)
switches new connections to rotated files without a restart; existing connections keep
their session. A reload that finds bad files keeps the old ones and says why.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from kvstore.transport.certs import Identity, identity_of_pem

log = logging.getLogger(__name__)

__all__ = ["TlsError", "TlsFiles", "peer_identity"]


class TlsError(Exception):
    """The certificate files are missing or do not fit together; the message says which."""


class TlsFiles:
    def __init__(self, directory: Path | str, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self._lock = threading.Lock()
        self.generation = 0
        self.root, self.key, self.chain = self._read()

    def _read(self) -> tuple[bytes, bytes, bytes]:
        paths = [self.directory / "ca.crt", self.directory / f"{self.name}.key",
                 self.directory / f"{self.name}.crt"]
        try:
            root, key, chain = (p.read_bytes() for p in paths)
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror}; create it with "
                           f"`kv certs init` / `kv certs node|client {self.name}`") from None
        try:
            ca = x509.load_pem_x509_certificate(root)
            cert = x509.load_pem_x509_certificate(chain)
            private = serialization.load_pem_private_key(key, None)
        except (ValueError, TypeError) as exc:
            raise TlsError(f"certificate files for {self.name} in {self.directory} are not "
                           f"valid PEM: {exc}") from None
        if private.public_key().public_numbers() != cert.public_key().public_numbers():
            raise TlsError(f"{self.name}.key does not belong to {self.name}.crt")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise TlsError(f"{self.name}.crt was not issued by the CA in ca.crt") from None
        ident = identity_of_pem(chain)
        if ident is None or ident.name != self.name:
            raise TlsError(f"{self.name}.crt names {cert.subject.rfc4514_string()}, not "
                           f"{self.name}")
        return root, key, chain

    def reload(self) -> bool:
        """Re-read the files; True if they changed. Bad files keep the old ones (logged)."""
        try:
            files = self._read()
        except TlsError as exc:
            log.error("certificate reload failed, keeping the current certificate: %s", exc)
            return False
        with self._lock:
            if files == (self.root, self.key, self.chain):
                return False
            self.root, self.key, self.chain = files
            self.generation += 1
        log.info("certificates for %s reloaded from %s", self.name, self.directory)
        return True

    def _config(self):
        return grpc.ssl_server_certificate_configuration([(self.key, self.chain)], self.root)

    def _fetcher(self):
        """A certificate callback for one server credential (one listener).

        gRPC calls it (on its own threads) before each handshake on that listener; None
        means no change. Each listener remembers the generation it last served: with one
        shared mark, the first listener to handshake after a reload would take the new
        certificate and the other (a node with separate client and peer ports) would keep
        serving the old one until the next reload.
        """
        served = self.generation

        def fetch():
            nonlocal served
            with self._lock:
                if served == self.generation:
                    return None
                served = self.generation
                return self._config()

        return fetch

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        with self._lock:
            initial = self._config()
            fetch = self._fetcher()
        return grpc.dynamic_ssl_server_credentials(initial, fetch,
                                                   require_client_authentication=
                                                   require_client_auth)

    def channel_credentials(self, with_cert: bool = True) -> grpc.ChannelCredentials:
        with self._lock:
            if with_cert:
                return grpc.ssl_channel_credentials(self.root, self.key, self.chain)
            return grpc.ssl_channel_credentials(self.root)


_IDENTITIES: OrderedDict[bytes, Identity | None] = OrderedDict()
_CACHE = 1024


def peer_identity(context) -> Identity | None:
    """The verified identity of the peer of a server call (None: no client certificate).

    gRPC has checked the certificate against the CA before the call reaches us; parsing
    its PEM is cached, since every call of a connection presents the same one.
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") if auth else None
    if not pems:
        return None
    pem = pems[0]
    if pem in _IDENTITIES:
        _IDENTITIES.move_to_end(pem)
        return _IDENTITIES[pem]
    ident = identity_of_pem(pem)
    _IDENTITIES[pem] = ident
    if len(_IDENTITIES) > _CACHE:
        _IDENTITIES.popitem(last=False)
    return ident
