"""Jinja filters for the mxpin benchmark playbook: what mxpin computes from
the keys and certificates it reads from a host (SPKI SHA-256 pins in Postfix
style, key/certificate match, SAN and expiry), done on the Ansible controller
with `cryptography` (a dependency of ansible-core)."""
import base64
import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def _pem(slurped):
    """Accept a slurp result's base64 `content` or PEM text."""
    if isinstance(slurped, dict):
        slurped = slurped["content"]
    if "-----BEGIN" in slurped:
        return slurped.encode()
    return base64.b64decode(slurped)


def _spki_der(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _postfix_fp(der):
    return ":".join("%02X" % b for b in hashlib.sha256(der).digest())


def cert_spki_sha256(slurped):
    """SPKI SHA-256 of a certificate, as `match=` wants it (AA:BB:...)."""
    cert = x509.load_pem_x509_certificate(_pem(slurped))
    return _postfix_fp(_spki_der(cert.public_key()))


def key_spki_sha256(slurped):
    """SPKI SHA-256 of the public half of a private key."""
    key = serialization.load_pem_private_key(_pem(slurped), password=None)
    return _postfix_fp(_spki_der(key.public_key()))


def cert_problem(slurped, mx, renew_days=30):
    """'' if the certificate names mx and is valid for more than renew_days,
    else what is wrong (what mxpin would re-issue it for)."""
    cert = x509.load_pem_x509_certificate(_pem(slurped))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if mx not in names:
        return "certificate does not name %s (SAN: %s)" % (mx, names)
    not_after = cert.not_valid_after_utc
    now = datetime.datetime.now(datetime.timezone.utc)
    if not_after - now < datetime.timedelta(days=int(renew_days)):
        return "certificate expires %s (renew_days %s)" % (not_after, renew_days)
    return ""


class FilterModule:
    def filters(self):
        return {
            "cert_spki_sha256": cert_spki_sha256,
            "key_spki_sha256": key_spki_sha256,
            "cert_problem": cert_problem,
        }
