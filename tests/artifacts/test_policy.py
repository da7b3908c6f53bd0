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


def _call_pickle(module: str, name: str, *args: object) -> bytes:
    """A protocol-2 pickle that imports ``module.name`` and calls it with ``args``."""
    import pickle

    return (
        b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1]
        + b"R."
    )


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("pydoc", "pipepager"),
        ("pydoc", "tempfilepager"),
        ("pipes", "Template"),
        ("doctest", "debug_script"),
        ("logging.config", "listen"),
        ("uuid", "_get_command_stdout"),
        ("gzip", "open"),
        ("imaplib", "IMAP4"),
    ],
)
def test_command_and_file_callables_are_dangerous(module: str, name: str) -> None:
    assert DEFAULT_POLICY.classify(module, name) is ImportClass.DANGEROUS


def test_pydoc_pipepager_pickle_really_runs_and_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    marker = tmp_path / "MARKER"
    data = _call_pickle("pydoc", "pipepager", "x", f"touch {marker}")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(data)
    # independent fact: plain pickle.loads runs the shell command
    subprocess.run(
        [sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
         str(evil)], check=True, cwd=tmp_path, capture_output=True, timeout=30,
    )
    assert marker.exists()
    marker.unlink()
    assert bastion.scan([evil]).files[0].verdict.value == "unsafe"
    with pytest.raises(bastion.UnsafeArtifactError, match="verdict is unsafe"):
        bastion.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("numpy", "save"), ("numpy", "savetxt"), ("numpy", "memmap"), ("numpy", "fromfile"),
     ("numpy", "load"), ("numpy", "genfromtxt"), ("numpy", "DataSource"),
     ("numpy", "ndarray.tofile"), ("numpy", "savez"), ("torch", "save"),
     ("torch", "from_file"), ("torch", "UntypedStorage.from_file")],
)
def test_wildcard_allow_never_reaches_file_functions(module: str, name: str) -> None:
    policy = DEFAULT_POLICY.extended([f"{module}.*"])
    assert policy.classify(module, name) is ImportClass.DANGEROUS
    with pytest.raises(bastion.ConfigurationError, match="refusing to allow"):
        DEFAULT_POLICY.extended([f"{module}.{name}"])  # exact allows stay refused too


def test_numpy_save_pickle_refused_under_wildcard_allow(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    target = tmp_path / "written.npy"
    data = _call_pickle("numpy", "save", str(target), np.arange(3))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(data)
    policy = DEFAULT_POLICY.extended(["numpy.*"])
    with pytest.raises(bastion.UnsafeArtifactError, match="verdict is unsafe"):
        bastion.load(evil, policy=policy)
    assert not target.exists()
    pickle.loads(data)  # independent fact: the pickle does write the file when loaded plainly
    assert target.exists()
