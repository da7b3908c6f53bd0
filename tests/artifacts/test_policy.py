"""The import policy: exact allowlist, dangerous names never allowable, Python 2 names mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bastion
from bastion.artifacts.scan.policy import DEFAULT_POLICY, ImportClass, load_policy, parse_spec


@pytest.mark.parametrize(
    ("module", "name", "expected"),
    [
        ("torch._utils", "_rebuild_tensor_v2", ImportClass.SAFE),
        ("collections", "OrderedDict", ImportClass.SAFE),
        ("numpy._core.multiarray", "_reconstruct", ImportClass.SAFE),
        ("__builtin__", "set", ImportClass.SAFE),  # Python 2 name, mapped like the unpickler
        ("os", "system", ImportClass.DANGEROUS),
        ("posix", "system", ImportClass.DANGEROUS),
        ("__builtin__", "eval", ImportClass.DANGEROUS),
        ("builtins", "getattr", ImportClass.DANGEROUS),
        ("subprocess", "Popen", ImportClass.DANGEROUS),
        ("torch", "load", ImportClass.DANGEROUS),
        ("collections", "OrderedDict.__init__.__globals__", ImportClass.DANGEROUS),
        ("torch._utils", "_rebuild_tensor_v2.__globals__", ImportClass.DANGEROUS),
        ("mypkg.models", "Net", ImportClass.UNKNOWN),
        ("torch._utils", "_rebuild_tensor_v2.x", ImportClass.UNKNOWN),  # dotted: not exact
    ],
)
def test_classification(module: str, name: str, expected: ImportClass) -> None:
    assert DEFAULT_POLICY.classify(module, name) is expected


def test_extension_allows_exact_names_and_whole_modules() -> None:
    policy = DEFAULT_POLICY.extended(["mypkg.models.Net", "mypkg.layers.*"])
    assert policy.classify("mypkg.models", "Net") is ImportClass.SAFE
    assert policy.classify("mypkg.models", "Other") is ImportClass.UNKNOWN
    assert policy.classify("mypkg.layers", "Block") is ImportClass.SAFE
    assert policy.classify("mypkg.layers", "Block.__init__") is ImportClass.DANGEROUS
    assert DEFAULT_POLICY.classify("mypkg.models", "Net") is ImportClass.UNKNOWN  # unchanged


@pytest.mark.parametrize("spec", ["os.system", "os.*", "builtins.eval", "subprocess.run"])
def test_dangerous_names_can_never_be_allowed(spec: str) -> None:
    with pytest.raises(bastion.ConfigurationError, match="refusing to allow"):
        DEFAULT_POLICY.extended([spec])


@pytest.mark.parametrize("spec", ["", "noname", "a..b", "1pkg.X", "pkg.", "pkg.*.X"])
def test_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(bastion.ConfigurationError, match="invalid allow entry"):
        parse_spec(spec)


def test_policy_file(tmp_path: Path) -> None:
    good = tmp_path / "p.toml"
    good.write_text('name = "mine"\nallow = ["mypkg.models.Net"]\n')
    policy = load_policy(good)
    assert policy.name == "mine"
    assert policy.classify("mypkg.models", "Net") is ImportClass.SAFE
    for text, match in [
        ("allow = [", "not valid TOML"),
        ('allow = "x"', "list of strings"),
        ('deny = ["x.y"]', "unknown keys"),
        ('allow = ["os.system"]', "refusing"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(bastion.ConfigurationError, match=match):
            load_policy(bad)
    with pytest.raises(bastion.ConfigurationError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")


@given(st.text(max_size=40), st.text(max_size=40))
def test_classify_never_raises(module: str, name: str) -> None:
    assert DEFAULT_POLICY.classify(module, name) in set(ImportClass)
