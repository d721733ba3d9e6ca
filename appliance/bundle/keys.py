"""Bundle signing keys (Ed25519, with ``cryptography``): create a pair, sign a manifest.

    appliance bundle keygen --out ~/keys/site-bundle      # -> site-bundle (private, 0600) + site-bundle.pub

The private key stays on the build machine; the public key (``.pub``, PEM) goes to the site once,
through a channel other than the stick, or its fingerprint is read out and checked there
(``install.sh --fingerprint``). Verification uses the standard-library verifier
(``appliance.bundle.ed25519``), which is what the target runs before anything is installed.
"""
from __future__ import annotations

import os
from pathlib import Path

from appliance.bundle import ed25519
from appliance.bundle.verify import BundleError


def generate(out: Path) -> tuple[Path, Path, str]:
    """Write a new private key to ``out`` (mode 0600) and its public key to ``out.pub``; never overwrites."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if path.exists():
            raise BundleError(f"{path} already exists; a signing key is never overwritten (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    pub.write_bytes(public_pem)
    return out, pub, ed25519.fingerprint(ed25519.public_key_from_pem(public_pem.decode("ascii")))


def load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: cannot read an unencrypted Ed25519 private key in PEM ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 key")
    return key


def public_pem(private_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(private_key, data: bytes) -> bytes:
    return private_key.sign(data)


def fingerprint_of_private(private_key) -> str:
    return ed25519.fingerprint(ed25519.public_key_from_pem(public_pem(private_key).decode("ascii")))
