"""Signing and verification: roundtrips, every tamper kind named, untrusted and corrupt signatures,
in-memory digest checks, and interop with the reference ``model_signing`` CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from model_signing import hashing, signing

from bastion.artifacts.keys import KeyPair, generate_keypair
from bastion.artifacts.sign import sign
from bastion.artifacts.verify import check_bytes_digest, read_signed_digests, verify
from bastion.core.errors import ConfigurationError, IntegrityError, SignatureError

MODEL_SIGNING = str(Path(sys.executable).with_name("model_signing"))


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "keys" / "signer.pem")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(_bytes(0, 4096))
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 2}')
    (root / "weights.bin").write_bytes(_bytes(1, 3000))
    (root / "sub" / "head.bin").write_bytes(_bytes(2, 500))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".gitignore").write_text("*.tmp\n")
    return root


def test_file_roundtrip_default_signature_and_digests(model_file: Path, keys: KeyPair) -> None:
    sig = sign(model_file, keys.private_key)
    assert sig == model_file.with_name("weights.pt.sig")
    result = verify(model_file, signature=sig, public_keys=keys.public_key)
    assert result.key == keys.public_key
    assert result.files == {"weights.pt": hashlib.sha256(model_file.read_bytes()).hexdigest()}
    assert result.to_dict()["files"]["weights.pt"] == result.files["weights.pt"]


def test_directory_roundtrip_ignores_signature_and_git_files(
    model_dir: Path, keys: KeyPair
) -> None:
    sig = sign(model_dir, keys.private_key)
    assert sig == model_dir / "model.sig"
    (model_dir / ".git" / "HEAD").write_text("changed by a commit\n")  # git files are ignored
    (model_dir / ".gitignore").write_text("changed\n")
    result = verify(model_dir, signature=sig, public_keys=keys.public_key)
    assert sorted(result.files) == ["config.json", "sub/head.bin", "weights.bin"]
    assert result.files["sub/head.bin"] == hashlib.sha256(_bytes(2, 500)).hexdigest()
    signed = read_signed_digests(sig, keys.public_key)
    assert "model.sig" in signed.ignore_paths and ".git" in signed.ignore_paths


def _flip(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "pattern"),
    [
        (lambda d: _flip(d / "weights.bin"), r"changed: weights\.bin"),
        (lambda d: (d / "extra.py").write_text("import os"), r"unexpected: extra\.py"),
        (lambda d: (d / "sub" / "head.bin").unlink(), r"missing: sub/head\.bin"),
        (
            lambda d: (d / "config.json").rename(d / "cfg.json"),
            r"missing: config\.json; unexpected: cfg\.json; renamed: config\.json -> cfg\.json",
        ),
    ],
    ids=["flip-byte", "add", "remove", "rename"],
)
def test_every_tamper_kind_names_the_file(
    model_dir: Path, keys: KeyPair, tamper: object, pattern: str
) -> None:
    sig = sign(model_dir, keys.private_key)
    tamper(model_dir)  # type: ignore[operator]
    with pytest.raises(IntegrityError, match=pattern) as info:
        verify(model_dir, signature=sig, public_keys=keys.public_key)
    assert info.value.path == model_dir


def test_flipped_byte_in_single_file_names_it(model_file: Path, keys: KeyPair) -> None:
    sig = sign(model_file, keys.private_key)
    _flip(model_file, 4000)
    with pytest.raises(IntegrityError, match=r"changed: weights\.pt"):
        verify(model_file, signature=sig, public_keys=keys.public_key)


def test_symlink_added_after_signing_is_refused(model_dir: Path, keys: KeyPair) -> None:
    sig = sign(model_dir, keys.private_key)
    (model_dir / "link.bin").symlink_to(model_dir / "weights.bin")
    with pytest.raises(IntegrityError, match="link.bin"):
        verify(model_dir, signature=sig, public_keys=keys.public_key)


def test_untrusted_key_and_keydir_with_one_trusted(
    tmp_path: Path, model_dir: Path, keys: KeyPair
) -> None:
    sig = sign(model_dir, keys.private_key)
    keydir = tmp_path / "trusted"
    others = [generate_keypair(tmp_path / f"o{i}.pem", keydir / f"o{i}.pub.pem") for i in (1, 2)]
    with pytest.raises(SignatureError, match=r"not verified by any trusted key \(1 tried\)"):
        verify(model_dir, signature=sig, public_keys=others[0].public_key)
    with pytest.raises(SignatureError, match=r"\(2 tried\).*signed by another key"):
        verify(model_dir, signature=sig, public_keys=keydir)
    trusted = keydir / "zz-signer.pub.pem"
    trusted.write_bytes(keys.public_key.read_bytes())
    result = verify(model_dir, signature=sig, public_keys=keydir)
    assert result.key == trusted


def _edit_bundle(sig: Path, edit: object) -> None:
    bundle = json.loads(sig.read_text())
    edit(bundle)  # type: ignore[operator]
    sig.write_text(json.dumps(bundle))


def _swap_payload_digest(bundle: dict) -> None:
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()


def _flip_sig(bundle: dict) -> None:
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (lambda s: s.write_bytes(s.read_bytes()[:100]), "not a valid OpenSSF Model Signing bundle"),
        (lambda s: s.write_bytes(b"\xff\xfe garbage"), "not a valid OpenSSF Model Signing bundle"),
        (lambda s: s.write_text("{}"), "not a valid OpenSSF Model Signing bundle"),
        (lambda s: _edit_bundle(s, _flip_sig), "does not match the signed content"),
        (lambda s: _edit_bundle(s, _swap_payload_digest), "does not match the signed content"),
    ],
    ids=["truncated", "binary", "empty-json", "flipped-signature", "edited-payload"],
)
def test_corrupted_signature_is_a_signature_error(
    model_file: Path, keys: KeyPair, corrupt: object, pattern: str
) -> None:
    sig = sign(model_file, keys.private_key)
    corrupt(sig)  # type: ignore[operator]
    with pytest.raises(SignatureError, match=pattern):
        verify(model_file, signature=sig, public_keys=keys.public_key)


def test_signature_of_another_model_is_a_signature_error(
    tmp_path: Path, model_dir: Path, model_file: Path, keys: KeyPair
) -> None:
    other = tmp_path / "other.pt"
    other.write_bytes(b"another model")
    other_sig = sign(other, keys.private_key)
    with pytest.raises(SignatureError, match="for another model.*'other.pt'"):
        verify(model_file, signature=other_sig, public_keys=keys.public_key)
    with pytest.raises(SignatureError, match="for another model"):
        verify(model_dir, signature=other_sig, public_keys=keys.public_key)


def test_missing_inputs_are_usage_errors(model_file: Path, keys: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="signature file not found"):
        verify(model_file, signature=tmp_path / "none.sig", public_keys=keys.public_key)
    with pytest.raises(ConfigurationError, match="model not found"):
        sign(tmp_path / "nope", keys.private_key)
    with pytest.raises(ConfigurationError, match="private key"):
        sign(model_file, keys.public_key)


def test_in_memory_digest_check(model_file: Path, keys: KeyPair) -> None:
    data = model_file.read_bytes()
    manifest = read_signed_digests(sign(model_file, keys.private_key), keys.public_key)
    assert manifest.digests == {".": hashlib.sha256(data).hexdigest()}
    assert manifest.method == "files" and manifest.hash_type == "sha256"
    check_bytes_digest(manifest, "weights.pt", data)
    with pytest.raises(IntegrityError, match="weights.pt: content differs"):
        check_bytes_digest(manifest, "weights.pt", data[:-1] + bytes([data[-1] ^ 1]))


def test_in_memory_check_refuses_what_it_cannot_check(
    tmp_path: Path, model_dir: Path, keys: KeyPair
) -> None:
    manifest = read_signed_digests(sign(model_dir, keys.private_key), keys.public_key)
    data = (model_dir / "weights.bin").read_bytes()
    with pytest.raises(IntegrityError, match="covers 3 files"):
        check_bytes_digest(manifest, "weights.bin", data)
    one = tmp_path / "one"
    one.mkdir()
    (one / "w.bin").write_bytes(data)
    single = read_signed_digests(sign(one, keys.private_key), keys.public_key)
    check_bytes_digest(single, "w.bin", data)
    with pytest.raises(IntegrityError, match="covers 'w.bin', not 'x.bin'"):
        check_bytes_digest(single, "x.bin", data)
    sharded = tmp_path / "sharded.sig"
    signing.Config().use_elliptic_key_signer(private_key=keys.private_key).set_hashing_config(
        hashing.Config().use_shard_serialization(shard_size=1024)
    ).sign(one / "w.bin", sharded)
    with pytest.raises(IntegrityError, match="'shards' hashing.*needs 'files' hashing"):
        check_bytes_digest(read_signed_digests(sharded, keys.public_key), "w.bin", data)
    # a sharded signature still verifies from disk, and tampering is named by file
    assert verify(one / "w.bin", signature=sharded, public_keys=keys.public_key).files
    _flip(one / "w.bin", 2000)
    with pytest.raises(IntegrityError, match=r"changed: w\.bin"):
        verify(one / "w.bin", signature=sharded, public_keys=keys.public_key)


def _ms(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_bastion_signature_verifies_with_model_signing(
    kind: str, model_file: Path, model_dir: Path, keys: KeyPair
) -> None:
    model = model_file if kind == "file" else model_dir
    sig = sign(model, keys.private_key)
    done = _ms("verify", "key", model, "--signature", sig, "--public_key", keys.public_key)
    assert done.returncode == 0, done.stderr
    _flip(model_file if kind == "file" else model_dir / "weights.bin")
    done = _ms("verify", "key", model, "--signature", sig, "--public_key", keys.public_key)
    assert done.returncode == 1


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_model_signing_signature_verifies_with_bastion(
    kind: str, tmp_path: Path, model_file: Path, model_dir: Path, keys: KeyPair
) -> None:
    model = model_file if kind == "file" else model_dir
    sig = tmp_path / "ms.sig" if kind == "file" else model_dir / "model.sig"
    done = _ms("sign", "key", model, "--signature", sig, "--private_key", keys.private_key)
    assert done.returncode == 0, done.stderr
    result = verify(model, signature=sig, public_keys=keys.public_key)
    assert result.key == keys.public_key
    expected = 1 if kind == "file" else 3
    assert len(result.files) == expected
    (model_dir / "added.bin").write_bytes(b"x")
    if kind == "dir":
        with pytest.raises(IntegrityError, match=r"unexpected: added\.bin"):
            verify(model, signature=sig, public_keys=keys.public_key)
