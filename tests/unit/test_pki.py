import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from reconciler.core import pki
from reconciler.core.pki import KeySpec, LeafRequest
from reconciler.errors import PKIError

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
FAST = KeySpec("ECDSA", 256)


def test_ca_is_a_self_signed_ca_with_kubeadm_validity():
    ca = pki.new_ca("kubernetes", now=NOW, key=FAST)
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.cert.subject == ca.cert.issuer
    assert pki.is_signed_by(ca.cert, ca.cert)
    assert ca.cert.not_valid_after_utc - NOW == pki.CA_VALIDITY
    assert ca.cert.not_valid_before_utc < NOW


@pytest.mark.parametrize("spec", [KeySpec("RSA", 2048), KeySpec("ECDSA", 256), KeySpec("ECDSA", 384)])
def test_key_spec_round_trips(spec):
    ca = pki.new_ca("c", now=NOW, key=spec)
    assert pki.key_spec_of(ca.cert.public_key()) == spec
    assert pki.key_spec_of(pki.load_private_key(ca.key_pem, source="k")) == spec


@pytest.mark.parametrize("algorithm,size", [("RSA", 1024), ("ECDSA", 521), ("DSA", 2048)])
def test_unsupported_key_specs_are_refused(algorithm, size):
    with pytest.raises(PKIError, match="unsupported key"):
        KeySpec(algorithm, size)


def test_leaf_is_signed_by_its_ca_only_and_carries_usages_and_sans():
    ca = pki.new_ca("kubernetes", now=NOW, key=FAST)
    other = pki.new_ca("kubernetes", now=NOW, key=FAST)  # same name, different key
    leaf = pki.issue_leaf(ca, LeafRequest("kube-apiserver", server=True, dns_names=("kubernetes",),
                                          ip_addresses=("127.0.0.1",), key=FAST), now=NOW)
    assert pki.is_signed_by(leaf.cert, ca.cert)
    assert not pki.is_signed_by(leaf.cert, other.cert)
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert pki.key_matches_cert(leaf.key, leaf.cert) and not pki.key_matches_cert(ca.key, leaf.cert)


def test_leaf_never_outlives_its_ca():
    ca = pki.new_ca("short", now=NOW, key=FAST, validity=dt.timedelta(days=30))
    leaf = pki.issue_leaf(ca, LeafRequest("client", client=True, key=FAST), now=NOW)
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_leaf_without_usage_is_refused():
    ca = pki.new_ca("c", now=NOW, key=FAST)
    with pytest.raises(PKIError, match="server or client"):
        pki.issue_leaf(ca, LeafRequest("nothing", key=FAST), now=NOW)


def test_fingerprints_and_kubeadm_discovery_hash():
    ca = pki.new_ca("c", now=NOW, key=FAST)
    assert pki.fingerprint(ca.cert).startswith("sha256:") and len(pki.fingerprint(ca.cert)) == 7 + 64
    assert pki.public_key_hash(ca.cert) != pki.fingerprint(ca.cert)


def test_malformed_input_is_named_in_the_error():
    with pytest.raises(PKIError, match="nodes/a/ca.crt: not a PEM certificate"):
        pki.load_certificates(b"garbage", source="nodes/a/ca.crt")
    with pytest.raises(PKIError, match="ca.key: not an unencrypted PEM private key"):
        pki.load_private_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                             source="ca.key")


def test_bundle_with_two_certificates_loads_both():
    a, b = pki.new_ca("a", now=NOW, key=FAST), pki.new_ca("b", now=NOW, key=FAST)
    certs = pki.load_certificates(a.cert_pem + b.cert_pem, source="bundle")
    assert [pki.fingerprint(c) for c in certs] == [pki.fingerprint(a.cert), pki.fingerprint(b.cert)]


def test_a_key_is_compared_with_a_certificate_without_the_checks_a_signing_key_gets():
    now = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)
    ca = pki.new_ca("kubernetes", now=now, key=pki.KeySpec("RSA", 2048))
    other = pki.new_ca("other", now=now, key=pki.KeySpec("ECDSA", 256))
    assert pki.key_pem_matches_cert(ca.key_pem, ca.cert, source="ca.key")
    assert not pki.key_pem_matches_cert(other.key_pem, ca.cert, source="other.key")
    assert not pki.key_pem_matches_cert(ca.key_pem, other.cert, source="ca.key")
    with pytest.raises(PKIError, match="broken.key: not an unencrypted PEM private key"):
        pki.key_pem_matches_cert(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", ca.cert,
                                 source="broken.key")
