"""Key generation and loading: modes, refusal to overwrite, keys usable by cryptography."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.artifacts.keys import (
    generate_keypair,
    load_private_key,
    load_public_key,
    trusted_key_files,
)
from bastion.core.errors import ConfigurationError


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_writes_owner_only_private_and_readable_public(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not leak the private key
    try:
        pair = generate_keypair(tmp_path / "sub" / "signing.pem")
    finally:
        os.umask(old)
    assert pair.private_key == tmp_path / "sub" / "signing.pem"
    assert pair.public_key == tmp_path / "sub" / "signing.pub.pem"
    assert _mode(pair.private_key) == 0o600
    assert _mode(pair.public_key) == 0o644
    assert pair.curve == "secp256r1"
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")] == []


def test_generated_keys_load_with_cryptography_and_match(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k.pem", tmp_path / "elsewhere.pem")
    private = serialization.load_pem_private_key(pair.private_key.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pair.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(private.curve, ec.SECP256R1)
    signature = private.sign(b"msg", ec.ECDSA(hashes.SHA256()))
    public.verify(signature, b"msg", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("existing", ["private", "public"])
def test_refuses_to_overwrite_either_file(tmp_path: Path, existing: str) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    (private if existing == "private" else public).write_bytes(b"precious")
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        generate_keypair(private)
    kept = private if existing == "private" else public
    assert kept.read_bytes() == b"precious"
    other = public if existing == "private" else private
    assert not other.exists()  # nothing half-written


def test_overwrite_replaces_with_a_new_key(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path / "k.pem")
    before = first.private_key.read_bytes()
    second = generate_keypair(tmp_path / "k.pem", overwrite=True)
    assert second.private_key.read_bytes() != before
    assert _mode(second.private_key) == 0o600


def test_same_path_for_both_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="same"):
        generate_keypair(tmp_path / "k.pem", tmp_path / "k.pem")


def test_load_errors_are_configuration_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigurationError, match="not a PEM private key"):
        load_private_key(garbage)
    with pytest.raises(ConfigurationError, match="not found"):
        load_private_key(tmp_path / "missing.pem")
    pair = generate_keypair(tmp_path / "k.pem")
    with pytest.raises(ConfigurationError, match="private key"):
        load_public_key(pair.private_key)
    k1 = ec.generate_private_key(ec.SECP256K1())
    odd = tmp_path / "k1.pem"
    odd.write_bytes(
        k1.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigurationError, match="secp256k1"):
        load_public_key(odd)
    assert isinstance(load_public_key(pair.public_key), ec.EllipticCurvePublicKey)


def test_trusted_key_files_expands_directories(tmp_path: Path) -> None:
    keydir = tmp_path / "trusted"
    a = generate_keypair(tmp_path / "a.pem", keydir / "a.pub.pem")
    b = generate_keypair(tmp_path / "b.pem", keydir / "b.pub")
    (keydir / "README.txt").write_text("ignored: not a key suffix")
    assert trusted_key_files(keydir) == (a.public_key, b.public_key)
    assert trusted_key_files([b.public_key, keydir]) == (b.public_key, a.public_key)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="no public keys"):
        trusted_key_files(empty)
    (keydir / "oops.pem").write_bytes(a.private_key.read_bytes())
    with pytest.raises(ConfigurationError, match="oops.pem: this is a private key"):
        trusted_key_files(keydir)
