"""Certificate authority and leaf certificate math.

Pure: every function takes what it needs (including the current time) and returns values;
nothing here reads or writes files. The sandbox builds its clusters with these functions
and the rotation reissues certificates with the same ones, so both agree on what a
kubeadm-style certificate looks like.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Literal, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.errors import PKIError

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

# kubeadm's defaults: CAs live ten years, leaves one year.
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
# Certificates start a little in the past so that a peer whose clock lags still accepts them.
BACKDATE = dt.timedelta(minutes=5)

_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1}
_RSA_SIZES = (2048, 3072, 4096)


@dataclass(frozen=True)
class KeySpec:
    """A key algorithm and size: RSA 2048/3072/4096 or ECDSA P-256/P-384."""

    algorithm: Literal["RSA", "ECDSA"] = "RSA"
    size: int = 2048

    def __post_init__(self) -> None:
        allowed = _RSA_SIZES if self.algorithm == "RSA" else tuple(_CURVES)
        if self.algorithm not in ("RSA", "ECDSA") or self.size not in allowed:
            raise PKIError(f"unsupported key {self.algorithm} {self.size}; use RSA 2048/3072/4096 or ECDSA 256/384")

    def __str__(self) -> str:
        return f"RSA-{self.size}" if self.algorithm == "RSA" else f"ECDSA-P{self.size}"


def generate_key(spec: KeySpec) -> PrivateKey:
    if spec.algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    return ec.generate_private_key(_CURVES[spec.size]())


def key_spec_of(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> KeySpec:
    """The KeySpec of a private or public key."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return KeySpec("RSA", key.key_size)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return KeySpec("ECDSA", key.curve.key_size)
    raise PKIError(f"unsupported key type {type(key).__name__}")


@dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)


@dataclass(frozen=True)
class LeafRequest:
    """What a leaf certificate is for. Usages follow kubeadm: server, client or both."""

    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    validity: dt.timedelta = LEAF_VALIDITY
    key: KeySpec = field(default_factory=KeySpec)


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_usage(*, key_encipherment: bool, cert_sign: bool) -> x509.KeyUsage:
    """kubeadm's key usages: digital signature always, key encipherment for RSA keys,
    certificate signing for CAs."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def new_ca(
    common_name: str,
    *,
    now: dt.datetime,
    key: KeySpec | None = None,
    validity: dt.timedelta = CA_VALIDITY,
    organizations: tuple[str, ...] = (),
) -> KeyPair:
    """A self-signed CA as kubeadm makes one (CN=kubernetes for the cluster CA)."""
    private_key = generate_key(key or KeySpec())
    public_key = private_key.public_key()
    subject = _name(common_name, organizations)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_encipherment=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(private_key, _signing_hash(private_key))
    )
    return KeyPair(cert, private_key)


def issue_leaf(ca: KeyPair, request: LeafRequest, *, now: dt.datetime) -> KeyPair:
    """A leaf certificate signed by ``ca``; it never outlives the CA."""
    if not (request.server or request.client):
        raise PKIError(f"leaf {request.common_name!r} needs a server or client usage")
    private_key = generate_key(request.key)
    public_key = private_key.public_key()
    not_after = min(now + request.validity, ca.cert.not_valid_after_utc)
    usages = []
    if request.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if request.client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(request.common_name, request.organizations))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(private_key, rsa.RSAPrivateKey), cert_sign=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in request.dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in request.ip_addresses]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return KeyPair(builder.sign(ca.key, _signing_hash(ca.key)), private_key)


def private_key_pem(key: PrivateKey) -> bytes:
    """PEM as kubeadm writes it: PKCS#1 for RSA, SEC1 for ECDSA."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate, the form pinned in specs."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def public_key_hash(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the SubjectPublicKeyInfo, as `kubeadm join --discovery-token-ca-cert-hash`."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def load_certificates(pem: bytes, *, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``source`` names the file or object in errors."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PKIError(f"{source}: not a PEM certificate bundle ({exc})") from exc
    return certs


def load_private_key(pem: bytes, *, source: str, validate: bool = True) -> PrivateKey:
    """``validate=False`` skips cryptography's RSA consistency checks (about 35 ms a key, under
    the GIL): only for keys that are compared with a certificate, never signed with."""
    try:
        key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=not validate)
    except (ValueError, TypeError) as exc:
        # The message of cryptography's error never contains key material.
        raise PKIError(f"{source}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise PKIError(f"{source}: unsupported private key type {type(key).__name__}")
    return key


def key_matches_cert(key: PrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key().public_numbers() == cert.public_key().public_numbers()


def key_pem_matches_cert(pem: bytes, cert: x509.Certificate, *, source: str) -> bool:
    """Whether a PEM private key belongs to ``cert``: a comparison of public numbers, so the
    key is loaded without the costly checks a key to sign with gets."""
    return key_matches_cert(load_private_key(pem, source=source, validate=False), cert)


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key made the signature on ``cert`` (names alone are not enough)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def reissue(template: x509.Certificate, ca: KeyPair, *, key: KeySpec, validity: dt.timedelta,
            now: dt.datetime) -> KeyPair:
    """A new key and certificate from ``ca`` for what ``template`` is for: the same subject,
    alternative names and usages, so that whoever checks them sees no difference but the issuer."""
    try:
        usages = template.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = []
    try:
        alt_names = template.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt_names = None
    private_key = generate_key(key)
    public_key = private_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(private_key, rsa.RSAPrivateKey), cert_sign=False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return KeyPair(builder.sign(ca.key, _signing_hash(ca.key)), private_key)


def bundle_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(cert) for cert in certs)
