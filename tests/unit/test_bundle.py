"""The bundle's trust chain on small synthetic bundles: signature, hashes, parts, differential bundles.

The pure-Python Ed25519 verifier is checked against ``cryptography`` and RFC 8032's vectors; each
tamper case is refused by ``verify_bundle`` naming the file *and* by the shipped installer run as
the target runs it (``python3 -I -B installer/install.py``), which must leave the prefix uncreated.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle import ed25519, keys
from appliance.bundle.build import (ALWAYS, REPO, _load_since, parse_lock, parse_size, seal, split)
from appliance.bundle.verify import (BundleError, check_from_base, load_public_key, reassemble, verify_bundle,
                                     verify_parts)

PROPS = {"appliance_version": "0.0.0", "target": "cpu", "python": f"cp{sys.version_info[0]}{sys.version_info[1]}",
         "platform": "linux_x86_64", "glibc_min": "2.17"}


def test_ed25519_matches_cryptography_and_rfc8032():
    for i in range(4):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        message = os.urandom(37 * i)
        signature = key.sign(message)
        assert ed25519.verify(public, message, signature)
        assert not ed25519.verify(public, message + b"x", signature)
        assert not ed25519.verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert not ed25519.verify(other, message, signature)
    # RFC 8032, section 7.1, tests 1 and 2
    vectors = [("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd2"
                "5bf5f0595bbe24655141438e7a100b"),
               ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c38"
                "7b2eaeb4302aeeb00d291612bb0c00")]
    for public, message, signature in vectors:
        assert ed25519.verify(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


@pytest.fixture
def signer(tmp_path):
    private, public, fingerprint = keys.generate(tmp_path / "keys" / "site")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert ed25519.fingerprint(load_public_key(public)) == fingerprint
    return keys.load_private(private), public


def make_bundle(root: Path, signer, since=None) -> Path:
    """A bundle with the real installer files and a few small stand-ins for wheels and models."""
    root.mkdir(parents=True)
    shutil.copyfile(REPO / "installer" / "install.sh", root / "install.sh")
    shutil.copyfile(REPO / "installer" / "README.md", root / "README.md")
    (root / "installer").mkdir()
    for name in ("install.py", "selftest.py"):
        shutil.copyfile(REPO / "installer" / name, root / "installer" / name)
    for name in ("verify.py", "ed25519.py"):
        shutil.copyfile(REPO / "appliance" / "bundle" / name, root / "installer" / name)
    (root / "bundle-key.pub").write_bytes(keys.public_pem(signer[0]))
    (root / "wheelhouse").mkdir()
    (root / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"PK" + bytes(range(256)) * 40)
    (root / "wheelhouse" / "requirements.txt").write_text("demo==1.0\n")
    (root / "workspace" / "models" / "mv-1").mkdir(parents=True)
    (root / "workspace" / "models" / "mv-1" / "model-q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    seal(root, signer[0], PROPS, since)
    return root


def run_installer(bundle: Path, prefix: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-B", str(bundle / "installer" / "install.py"), "--prefix",
                           str(prefix), *args], capture_output=True, text=True, timeout=60)


def refused(bundle: Path, signer, prefix: Path, needle: str) -> None:
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle, load_public_key(signer[1]))
    assert needle in str(info.value)
    done = run_installer(bundle, prefix, "--pubkey", str(signer[1]))
    assert done.returncode == 1, done.stderr
    assert needle in done.stderr and "nothing was installed" in done.stderr
    assert not prefix.exists(), "a refused bundle must not create anything"


def test_a_good_bundle_verifies_and_is_reproducible(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    manifest = verify_bundle(bundle, load_public_key(signer[1]))
    assert "wheelhouse/demo-1.0-py3-none-any.whl" in manifest["files"] and manifest["base"] is None
    first = ((bundle / "manifest.json").read_bytes(), (bundle / "manifest.json.sig").read_bytes())
    seal(bundle, signer[0], PROPS)
    assert ((bundle / "manifest.json").read_bytes(), (bundle / "manifest.json.sig").read_bytes()) == first
    assert b"created" not in first[0] and b"time" not in first[0]
    done = subprocess.run([sys.executable, "-I", "-B", str(bundle / "installer" / "verify.py"), str(bundle),
                           str(signer[1])], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ok: ")
    assert not list(bundle.rglob("__pycache__")), "verifying must not write into the bundle"


def test_a_changed_byte_in_a_wheel_is_refused(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    wheel = bundle / "wheelhouse" / "demo-1.0-py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[100] ^= 1
    wheel.write_bytes(bytes(data))
    refused(bundle, signer, tmp_path / "prefix", "wheelhouse/demo-1.0-py3-none-any.whl: sha256 differs")


def test_a_removed_file_is_refused(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    (bundle / "workspace" / "models" / "mv-1" / "model-q8_0.gguf").unlink()
    refused(bundle, signer, tmp_path / "prefix", "workspace/models/mv-1/model-q8_0.gguf: missing")


def test_an_added_file_or_link_is_refused(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    (bundle / "wheelhouse" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    refused(bundle, signer, tmp_path / "prefix", "wheelhouse/evil-1.0-py3-none-any.whl: unexpected file")
    (bundle / "wheelhouse" / "evil-1.0-py3-none-any.whl").unlink()
    (bundle / "models").mkdir()
    (bundle / "models" / "passwd").symlink_to("/etc/passwd")
    refused(bundle, signer, tmp_path / "prefix", "models/passwd: a link")


def test_a_wrong_signature_or_another_keys_signature_is_refused(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    sig = bundle / "manifest.json.sig"
    good = sig.read_bytes()
    sig.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])
    refused(bundle, signer, tmp_path / "prefix", "manifest.json.sig: the signature of manifest.json is not valid")
    sig.write_bytes(Ed25519PrivateKey.generate().sign((bundle / "manifest.json").read_bytes()))
    refused(bundle, signer, tmp_path / "prefix", "manifest.json.sig: the signature of manifest.json is not valid")
    # a manifest edited to match an edited file is caught by the signature
    sig.write_bytes(good)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["README.md"]["bytes"] += 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    refused(bundle, signer, tmp_path / "prefix", "manifest.json.sig")


@pytest.fixture
def shipped_installer():
    """installer/install.py loaded as the bundle lays it out (verify.py and ed25519.py beside it)."""
    loaded = []

    def load(bundle: Path):
        spec = importlib.util.spec_from_file_location("bundle_install", bundle / "installer" / "install.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(module)
        return module

    yield load
    for name in ("bundle_install", "verify", "ed25519"):
        sys.modules.pop(name, None)


def test_the_key_is_pinned_never_taken_from_the_bundle_unasked(tmp_path, signer, shipped_installer):
    bundle = make_bundle(tmp_path / "b", signer)
    install = shipped_installer(bundle)
    prefix = tmp_path / "prefix"
    with pytest.raises(install.BundleError, match="first install: give the site's public key"):
        install.trusted_key(prefix, bundle, None, None)
    fingerprint = ed25519.fingerprint(load_public_key(signer[1]))
    assert install.trusted_key(prefix, bundle, None, fingerprint)[0] == load_public_key(signer[1])
    with pytest.raises(install.BundleError, match="bundle-key.pub: its fingerprint is"):
        install.trusted_key(prefix, bundle, None, "00" * 32)
    other, other_pub, _ = keys.generate(tmp_path / "keys" / "other")
    (prefix / "etc").mkdir(parents=True)
    shutil.copyfile(signer[1], prefix / "etc" / "bundle-key.pub")
    assert install.trusted_key(prefix, bundle, None, None)[1] == "pinned at first install"
    with pytest.raises(install.BundleError, match="this site pinned the key"):
        install.trusted_key(prefix, bundle, other_pub, None)


def test_a_split_bundle_is_checked_part_by_part_then_joined(tmp_path, signer):
    bundle = make_bundle(tmp_path / "b", signer)
    (bundle / "models").mkdir()
    (bundle / "models" / "big.gguf").write_bytes(os.urandom(2_500_000))
    seal(bundle, signer[0], PROPS)
    parts = split(bundle, tmp_path / "split", parse_size("1M"), signer[0])
    assert parts == ["bundle.tar.000", "bundle.tar.001", "bundle.tar.002"]
    key = load_public_key(signer[1])
    verify_parts(tmp_path / "split", key)
    joined = reassemble(tmp_path / "split", tmp_path / "joined", key)
    assert (joined / "models" / "big.gguf").read_bytes() == (bundle / "models" / "big.gguf").read_bytes()
    part = tmp_path / "split" / "bundle.tar.001"
    data = bytearray(part.read_bytes())
    data[5] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="bundle.tar.001: sha256 differs"):
        reassemble(tmp_path / "split", tmp_path / "joined2", key)
    assert not (tmp_path / "joined2").exists()
    done = run_installer(tmp_path / "split", tmp_path / "prefix", "--pubkey", str(signer[1]))
    assert done.returncode == 1 and "bundle.tar.001: sha256 differs" in done.stderr, done.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_differential_bundle_carries_only_what_changed(tmp_path, signer):
    first = make_bundle(tmp_path / "b1", signer)
    since = _load_since(first)
    second = tmp_path / "b2"
    shutil.copytree(first, second)
    (second / "manifest.json").unlink()
    (second / "manifest.json.sig").unlink()
    (second / "workspace" / "models" / "mv-2").mkdir()
    (second / "workspace" / "models" / "mv-2" / "model-q8_0.gguf").write_bytes(b"GGUF" + b"\1" * 1000)
    manifest = seal(second, signer[0], PROPS, since)
    assert manifest["base"]["from_base"] == ["wheelhouse/demo-1.0-py3-none-any.whl", "wheelhouse/requirements.txt",
                                             "workspace/models/mv-1/model-q8_0.gguf"]
    assert not (second / "wheelhouse").exists()
    assert (second / "workspace" / "models" / "mv-2" / "model-q8_0.gguf").is_file()
    assert all((second / rel).is_file() for rel in manifest["files"] if any(rel.startswith(a) for a in ALWAYS))
    key = load_public_key(signer[1])
    verify_bundle(second, key)
    check_from_base(first, manifest)
    (first / "wheelhouse" / "requirements.txt").write_text("demo==2.0\n")
    with pytest.raises(BundleError, match="wheelhouse/requirements.txt"):
        check_from_base(first, manifest)


def test_the_lock_and_sizes_are_read_strictly(tmp_path):
    lock = parse_lock(REPO / "requirements.lock")
    assert {e.name: e.version for e in lock}["torch"] == "2.13.0+cpu"
    assert all(e.hashes for e in lock) and len(lock) > 100
    (tmp_path / "bad.lock").write_text("requests==2.0\n")
    with pytest.raises(BundleError, match="no --hash for requests"):
        parse_lock(tmp_path / "bad.lock")
    assert parse_size("3900M") == 3900 << 20 and parse_size("4G") == 4 << 30
    with pytest.raises(BundleError):
        parse_size("four gigs")
