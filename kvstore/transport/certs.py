"""A private certificate authority for a cluster: the CA, node certificates, client
certificates (the `cryptography` library; no openssl binary needed).

Layout of a certificate directory (what `kv certs` writes and `--tls DIR` reads):

    ca.crt  ca.key          the cluster CA (keep ca.key offline once the certs are issued)
    NAME.crt  NAME.key      one pair per node or client, signed by the CA

Identity is in the subject: CN is the node id or the user name, OU says what it is
(`node` or `client`). Node certificates also carry their id as a DNS name (channels to a
peer verify the peer's certificate against the id they expect, whatever its address) and
the addresses given. Keys are ECDSA P-256: small, and fast to handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "KIND_CLIENT",
    "KIND_NODE",
    "NAME_RE",
    "CertError",
    "Identity",
    "identity_of_pem",
    "init_ca",
    "issue",
]

KIND_NODE = "node"
KIND_CLIENT = "client"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CA_DAYS = 3650
CERT_DAYS = 397


class CertError(Exception):
    """A certificate could not be made or read; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str   # KIND_NODE or KIND_CLIENT
    name: str   # node id or user name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CertError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(out: Path, name: str = "kvstore cluster CA", force: bool = False,
            days: int = CA_DAYS) -> Path:
    """Create ca.key and ca.crt in `out`; return the certificate path."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.key", _key_pem(key), True, force)
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), False, force)
    return out / "ca.crt"


def _load_ca(out: Path):
    try:
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {out} ({exc.filename} missing); run `kv certs init --out "
                        f"{out}` first") from None
    except ValueError as exc:
        raise CertError(f"the CA in {out} cannot be read: {exc}") from None
    return ca_cert, ca_key


def issue(out: Path, kind: str, name: str, addresses: list[str] = (), force: bool = False,
          days: int = CERT_DAYS, not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None) -> Path:
    """Issue NAME.key + NAME.crt in `out`, signed by the CA there; return the cert path.

    `addresses` (hosts or IPs) go into a node certificate's subject alternative names.
    """
    if kind not in (KIND_NODE, KIND_CLIENT):
        raise CertError(f"kind {kind!r} must be {KIND_NODE} or {KIND_CLIENT}")
    if not NAME_RE.match(name) or name == "ca":
        raise CertError(f"name {name!r} must be 1-63 letters, digits, '.', '_' or '-' "
                        "(and not 'ca')")
    ca_cert, ca_key = _load_ca(out)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if kind == KIND_NODE:
        sans: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost"),
                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for addr in addresses:
            host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
            try:
                entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            except ValueError:
                entry = x509.DNSName(host)
            if entry not in sans:
                sans.append(entry)
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(out / f"{name}.key", _key_pem(key), True, force)
    _write(out / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), False, force)
    return out / f"{name}.crt"


def identity_of_pem(pem: bytes) -> Identity | None:
    """The identity in a (CA-verified) certificate, or None when it names none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    subject = cert.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1 or ous[0].value not in (KIND_NODE, KIND_CLIENT):
        return None
    return Identity(str(ous[0].value), str(cns[0].value))


def describe(path: Path) -> dict:
    """Subject, kind, names and validity of a certificate file (for `kv certs show`)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read certificate {path}: {exc}") from None
    ident = identity_of_pem(path.read_bytes())
    try:
        sans = [str(n.value) for n in
                cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        sans = []
    return {"file": str(path), "subject": cert.subject.rfc4514_string(),
            "kind": ident.kind if ident else "ca", "name": ident.name if ident else "",
            "names": sans, "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}
