"""Pickled numpy dtypes: every state numpy writes passes, every forged one is refused.

``dtype.__setstate__`` trusts the pickled flags, sizes and offsets; a forged state makes numpy
read raw bytes as object pointers or past each element. The scanner rebuilds the dtype with
numpy's validating constructors and refuses any state numpy would not write for it.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bastion
from bastion.artifacts.load import load_bytes
from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.framing import _numpy_dtype
from bastion.artifacts.scan.numpy_dtypes import dtype_state_problem
from bastion.artifacts.scan.opcodes import Call, walk_pickle
from bastion.artifacts.scan.policy import DEFAULT_POLICY

_FIXED = [c + n for c, n in [("b", "1"), ("i", "1"), ("u", "1")]] + [
    f"{o}{c}" for o in "<>" for c in ("i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8",
                                      "g", "c8", "c16", "G")]
_FLEXIBLE = ["S1", "S7", "S0", "<U1", ">U5", "U0", "V1", "V16", "V0"]
_TIMES = [f"{o}{k}8{u}" for o in "<>" for k in "Mm"
          for u in ("", "[Y]", "[M]", "[W]", "[D]", "[h]", "[m]", "[s]", "[ms]", "[us]",
                    "[ns]", "[ps]", "[fs]", "[as]", "[3us]", "[25s]")]
_STRUCTURED: list[Any] = [
    ("f4", (2, 3)),
    (">i2", (4,)),
    ("S3", (2,)),
    [("a", "i4"), ("b", "f8")],
    [("a", "u1"), ("b", ">f8"), ("c", "S3")],
    np.dtype([("a", "u1"), ("b", "f8")], align=True),
    np.dtype([("a", "u1"), ("n", [("x", "i2"), ("y", "f8")])], align=True),
    {"names": ["x", "y"], "formats": ["f4", "i2"], "offsets": [0, 8], "titles": ["T1", None],
     "itemsize": 16},
    {"names": ["p", "q"], "formats": ["f8", "f8"], "offsets": [0, 0]},
    [("n", [("a", "i1"), ("b", ">f8"), ("deep", [("z", "c8", (2,))])]), ("s", "i4", (2,))],
    [("m", "M8[ms]"), ("t", "m8[3s]"), ("u", "U4")],
    np.dtype("f8", metadata={"unit": "m"}),
    np.dtype([("a", "i4")], metadata={"k": 1}),
    np.dtype("M8[s]", metadata={"k": "v"}),
]
_OBJECTS: list[Any] = ["O", [("a", "f4"), ("b", "O")], ("O", (2,)),
                       [("n", [("o", "O"), ("x", "i8")]), ("y", "f4")]]
_ALL = [np.dtype(d) for d in _FIXED + _FLEXIBLE + _TIMES + _STRUCTURED + _OBJECTS]


def _symbolic(data: bytes) -> Any:
    ctx = ScanContext(DEFAULT_POLICY, ScanLimits())
    walk = walk_pickle(memoryview(data), 0, ctx, "t")
    assert walk.error is None
    return walk.top


@pytest.mark.parametrize("dtype", _ALL, ids=repr)
def test_every_dtype_numpy_writes_is_canonical(dtype: np.dtype[Any]) -> None:
    call = _symbolic(pickle.dumps(dtype, protocol=2))
    assert isinstance(call, Call)
    assert dtype_state_problem(call) is None
    # joblib sizing agrees with numpy wherever it sizes the dtype at all
    sized = _numpy_dtype(call)
    assert sized == (dtype.itemsize, dtype.hasobject)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", _ALL, ids=repr)
def test_arrays_of_every_dtype_scan_and_load(dtype: np.dtype[Any], protocol: int) -> None:
    array = np.zeros(3, dtype=dtype)
    data = pickle.dumps({"a": array, "d": dtype}, protocol=protocol)
    report = scan_bytes(data)
    assert "forged-numpy-dtype" not in {f.kind for f in report.findings}
    if dtype.hasobject:  # object arrays pickle their items: judged by the usual rules
        assert report.verdict is not Verdict.UNSAFE
        return
    assert report.verdict is Verdict.SAFE, report.problems
    loaded, plain = load_bytes(data), pickle.loads(data)
    assert loaded["d"] == plain["d"] == dtype
    assert loaded["a"].dtype == plain["a"].dtype  # (numpy itself loads some as native order)
    assert loaded["a"].tobytes() == plain["a"].tobytes()
    assert (loaded["a"] == array).all()


class _Dtype:
    """Pickles as ``numpy.dtype(*args)`` + ``BUILD state``: any state, as an attacker would."""

    def __init__(self, args: tuple[Any, ...], state: tuple[Any, ...]) -> None:
        self.args, self.state = args, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.dtype, self.args, self.state)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _Array:
    """Pickles as numpy writes an array, over a (forged) dtype and raw bytes."""

    def __init__(self, dtype: _Dtype, shape: tuple[int, ...], raw: bytes) -> None:
        self.dtype, self.shape, self.raw = dtype, shape, raw

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                (1, self.shape, self.dtype, False, self.raw))


def _f8(flags: int) -> _Dtype:
    return _Dtype(("f8", False, True), (3, "<", None, None, None, -1, -1, flags))


_GARBAGE = b"\x41" * 32
#: name -> (pickled array, does plain pickle.loads + a touch of the array crash?)
_FORGERIES: dict[str, tuple[Any, bool]] = {
    "f8-flags-117": (_Array(_f8(117), (4,), np.arange(4.0).tobytes()), True),
    "f8-flags-1": (_Array(_f8(1), (4,), _GARBAGE), True),
    "object-flags-0": (_Array(_Dtype(("O8", False, True),
                                     (3, "|", None, None, None, -1, -1, 0)), (4,), _GARBAGE),
                       True),
    "struct-object-flags-0": (_Array(_Dtype(("V8", False, True), (
        3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)), (4,), _GARBAGE), True),
    "offset-past-itemsize": (_Array(_Dtype(("V8", False, True), (
        3, "|", None, ("a",), {"a": (np.dtype("f8"), 1 << 40)}, 8, 1, 16)), (4,), _GARBAGE),
        True),
    "flexible-elsize-lie": (_Array(_Dtype(("S4", False, True),
                                          (3, "|", None, None, None, 8, 1, 0)), (4,), _GARBAGE),
                            False),
    # (reads each element's 4 floats from 8 bytes: past the buffer, but seldom a crash)
    "subarray-shape-lie": (_Array(_Dtype(("V8", False, True), (
        3, "|", (np.dtype("f8"), (4,)), None, None, 8, 8, 0)), (4,), _GARBAGE), False),
    "datetime-unit-lie": (_Dtype(("M8", False, True), (
        4, "<", None, None, None, -1, -1, 0, (None, (b"s", 1, 7, 1)))), False),
    "nested-forged-field": (_Dtype(("V8", False, True), (
        3, "|", None, ("a",), {"a": (_f8(1), 0)}, 8, 1, 16)), False),
    "code-is-not-canonical": (_Dtype(("float64", False, True),
                                     (3, "<", None, None, None, -1, -1, 0)), False),
}

_TOUCH = """
import pickle, sys
a = pickle.loads(open(sys.argv[1], "rb").read())
touches = [repr, lambda a: a.copy(), lambda a: a[0].sum(), lambda a: [a[n] for n in a.dtype.names]]
for touch in touches:
    try:
        touch(a)
    except Exception as exc:  # a clean numpy error is no harm; only crashes count
        print(type(exc).__name__, exc)
del a
"""


@pytest.mark.parametrize("name", sorted(_FORGERIES))
def test_forged_dtype_is_refused(name: str, tmp_path: Path) -> None:
    obj, harmful = _FORGERIES[name]
    data = pickle.dumps(obj, protocol=2)
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert "forged-numpy-dtype" in {f.kind for f in report.findings}
    with pytest.raises(bastion.UnsafeArtifactError, match="forged-numpy-dtype"):
        load_bytes(data)
    if harmful:  # the check matters: numpy itself crashes on it
        path = tmp_path / "forged.pkl"
        path.write_bytes(data)
        run = subprocess.run([sys.executable, "-c", _TOUCH, str(path)], capture_output=True,
                             text=True, timeout=120, check=False)
        # killed by a signal (a wild pointer), or numpy's own "internal error" when freeing it
        assert run.returncode < 0 or "RuntimeError" in run.stderr, (run.returncode, run.stderr)


def _two_builds() -> bytes:
    """A structured dtype BUILT twice: first plain floats, then object fields over them."""
    plain = np.dtype([("a", "f8")])
    data = pickle.dumps(plain, protocol=2)
    again = pickle.dumps((3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 8, 63),
                         protocol=2)
    assert data.endswith(b"b.") and again.startswith(b"\x80\x02") and again.endswith(b".")
    return data[:-1] + again[2:-1] + b"b."


def test_second_build_on_a_dtype_is_refused() -> None:
    data = _two_builds()
    assert pickle.loads(data).hasobject  # numpy accepts the change of a live dtype
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert any("second BUILD" in f.detail for f in report.findings)


_OBJECT_FIELD = pickle.dumps((3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 8, 63),
                             protocol=2)[2:-1]


@pytest.mark.parametrize("maker", [
    b"cnumpy.dtypes\nBytesDType\nK\x08\x85R",
    b"ccopyreg\n_reconstructor\ncnumpy\ndtype\ncnumpy\ndtype\nX\x02\x00\x00\x00V8\x87R",
], ids=["dtypes-class", "reconstructor"])
def test_dtype_made_another_way_cannot_take_a_state(maker: bytes) -> None:
    data = b"\x80\x02" + maker + _OBJECT_FIELD + b"b."
    assert pickle.loads(data).hasobject  # numpy takes the state: S8 now holds objects
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert "forged-numpy-dtype" in {f.kind for f in report.findings}


def test_reproducer_from_mutation_fuzzing() -> None:
    """The hypothesis mutation test's find: a float64 pickled with flags 117 in its state."""
    data = bytearray(pickle.dumps({"w": np.arange(4.0), "n": [1, 2]}, protocol=2))
    state = b"K\x03X\x01\x00\x00\x00<q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    at = data.index(state)
    data[at + len(state) - 2] = 117  # K\x00 (flags 0) -> K\x75
    with pytest.raises(bastion.UnsafeArtifactError, match=r"flags\) is 117"):
        load_bytes(bytes(data))


def test_numpy_1_flags_written_as_a_signed_char_are_accepted() -> None:
    """numpy 1.x kept dtype flags in a C char: an aligned struct (flags 144) pickled as -112."""
    aligned = np.dtype([("a", "f8"), ("b", "i4")], align=True)
    assert aligned.flags == 144
    data = pickle.dumps(np.zeros(3, dtype=aligned), protocol=2)
    assert data.count(b"K\x10K\x08K\x90t") == 1
    old = data.replace(b"K\x10K\x08K\x90t", b"K\x10K\x08J\x90\xff\xff\xfft")  # -112
    assert scan_bytes(old).verdict is Verdict.SAFE
    loaded, plain = load_bytes(old), pickle.loads(old)
    assert loaded.dtype == plain.dtype == aligned and loaded.dtype.flags == plain.dtype.flags
    assert not loaded.dtype.hasobject and np.array_equal(loaded, plain)
    forged = data.replace(b"K\x10K\x08K\x90t", b"K\x10K\x08J\x91\xff\xff\xfft")  # -111
    assert scan_bytes(forged).verdict is Verdict.UNSAFE  # 145 - 256: the refcount bit set


@pytest.mark.parametrize(("data", "verdict"), [
    (b"\x80\x02cnumpy\ndtype\nX\x07\x00\x00\x00float32\x85R.", Verdict.SAFE),
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8K\x00K\x01\x87R.", Verdict.SAFE),  # Python 2
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8X\x06\x00\x00\x00latin1\x86R.",
     Verdict.UNKNOWN),  # numpy prints a VisibleDeprecationWarning on align='latin1'
    (b"\x80\x02cnumpy\ndtype\nK\x05\x85R.", Verdict.UNKNOWN),
], ids=["code-only", "int-flags", "align-is-text", "code-is-int"])
def test_dtype_calls_without_state(data: bytes, verdict: Verdict) -> None:
    report = scan_bytes(data)
    assert report.verdict is verdict, report.problems
    assert ("odd-numpy-dtype-call" in {f.kind for f in report.findings}) == (
        verdict is Verdict.UNKNOWN)


def test_joblib_sizes_structured_arrays_with_subarray_fields() -> None:
    import joblib  # noqa: PLC0415

    dtype = np.dtype([("n", [("a", "i1"), ("deep", [("z", "c8", (2,))])]), ("s", "i4", (2,))])
    array = np.arange(3 * dtype.itemsize, dtype="u1").view(dtype)
    buf = io.BytesIO()
    joblib.dump({"a": array, "x": np.ones(3)}, buf)
    report = scan_bytes(buf.getvalue())
    assert report.format == "joblib"
    assert report.verdict is Verdict.SAFE, report.problems
    loaded = load_bytes(buf.getvalue())
    assert loaded["a"].tobytes() == array.tobytes()
    assert (loaded["x"] == 1).all()
