"""Dataset manifests: roundtrip, every mismatch kind named, symlinks refused, corrupt files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from bastion.artifacts.manifest import (
    check_manifest,
    create_manifest,
    load_manifest,
    verify_manifest,
)
from bastion.core.errors import ConfigurationError, IntegrityError


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rng = random.Random(7)
    (root / "train" / "a.bin").write_bytes(rng.randbytes(3 << 20))  # > one 1 MiB chunk
    (root / "train" / "b.csv").write_text("x,y\n1,2\n")
    (root / "labels.txt").write_text("cat\ndog\n")
    (root / ".hidden").write_text("recorded too")
    return root


def test_roundtrip_records_sorted_posix_paths_and_excludes_itself(data: Path) -> None:
    out = data / "MANIFEST.json"
    made = create_manifest(data, out)
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["algorithm"] == "sha256"
    assert doc["root"] == str(data.resolve()) and doc["created"].endswith("Z")
    assert [f["path"] for f in doc["files"]] == [
        ".hidden",
        "labels.txt",
        "train/a.bin",
        "train/b.csv",
    ]
    assert doc["files"][2]["size"] == 3 << 20 and doc["total_bytes"] == sum(
        f.size for f in made.files
    )
    assert load_manifest(out).files == made.files
    result = verify_manifest(out)
    assert result.ok and result.checked == 4
    assert (result.changed, result.missing, result.added, result.refused) == ((), (), (), ())


def test_each_mismatch_kind_is_reported(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    create_manifest(data, out)
    a = bytearray((data / "train" / "a.bin").read_bytes())
    a[2 << 20] ^= 0xFF  # same size, different content
    (data / "train" / "a.bin").write_bytes(bytes(a))
    (data / "labels.txt").write_text("cat\ndog\nbird\n")  # different size
    (data / "train" / "b.csv").unlink()
    (data / "new.txt").write_text("new")
    result = check_manifest(out)
    assert not result.ok
    assert result.changed == ("labels.txt", "train/a.bin")
    assert result.missing == ("train/b.csv",)
    assert result.added == ("new.txt",)
    with pytest.raises(
        IntegrityError,
        match=r"changed: labels\.txt, train/a\.bin; "
        r"missing: train/b\.csv; added: new\.txt",
    ):
        verify_manifest(out)


def test_root_override_checks_a_moved_copy(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    create_manifest(data, out)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert check_manifest(out, root=copy).ok
    (copy / "labels.txt").write_text("changed!")
    assert check_manifest(out, root=copy).changed == ("labels.txt",)
    assert check_manifest(out).ok  # the original is untouched


def test_symlinks_are_refused(data: Path, tmp_path: Path) -> None:
    (data / "link.txt").symlink_to(data / "labels.txt")
    with pytest.raises(ConfigurationError, match=r"refusing symlinks.*link\.txt"):
        create_manifest(data, tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()
    (data / "link.txt").unlink()
    create_manifest(data, tmp_path / "m.json")
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "dirlink").symlink_to(outside, target_is_directory=True)
    result = check_manifest(tmp_path / "m.json")
    assert not result.ok and result.refused == ("dirlink",)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", "not valid JSON"),
        ('{"kind": "something-else"}', "not a bastion dataset manifest"),
        (None, "missing field 'files'"),
        ("traversal", "not a clean relative POSIX path"),
        ("bad-digest", "not 64 lowercase hex"),
    ],
)
def test_corrupt_manifest_gives_a_clear_integrity_error(
    data: Path, tmp_path: Path, content: str | None, pattern: str
) -> None:
    out = tmp_path / "m.json"
    doc = create_manifest(data, out).to_dict()
    if content is None:
        del doc["files"]
        text = json.dumps(doc)
    elif content == "traversal":
        doc["files"][0]["path"] = "../../etc/passwd"
        text = json.dumps(doc)
    elif content == "bad-digest":
        doc["files"][0]["sha256"] = "zz"
        text = json.dumps(doc)
    else:
        text = content
    out.write_text(text)
    with pytest.raises(IntegrityError, match=pattern):
        check_manifest(out)


def test_usage_errors(tmp_path: Path, data: Path) -> None:
    with pytest.raises(ConfigurationError, match="manifest not found"):
        check_manifest(tmp_path / "none.json")
    with pytest.raises(ConfigurationError, match="not a directory"):
        create_manifest(tmp_path / "nodir")
    create_manifest(data, tmp_path / "m.json")
    with pytest.raises(ConfigurationError, match="not a directory"):
        check_manifest(tmp_path / "m.json", root=tmp_path / "nodir")
