"""Pickled numpy dtypes must carry exactly the state numpy itself writes.

numpy pickles a dtype as ``numpy.dtype(code, align, copy)`` followed by a ``BUILD`` whose state
``(version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])``
``dtype.__setstate__`` trusts: forged flags make a ``float64`` claim to hold object references,
a lying elsize or field offset reaches past each element, a structured dtype with an object field
and no refcount flag reads raw bytes as pointers. Any of these crashes or corrupts memory once an
array is built over the dtype, so they are refused before unpickling.

The check rebuilds, with numpy's own validating constructors (never ``__setstate__``), the dtype
that the call's structural parts describe (code, byte order, datetime unit, subarray base and
shape, field names, formats, offsets, titles, itemsize, alignment), and compares what numpy would
pickle for it, element by element, with what the pickle holds. numpy is imported only when a
pickle actually builds a dtype.
"""

from __future__ import annotations

from typing import Any

from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.values import Call, DictValue, Global

__all__ = ["check_dtype_build", "check_dtype_call", "dtype_state_problem"]

_DTYPE = Global("numpy", "dtype")
_RECONSTRUCTOR = Global("copyreg", "_reconstructor")
_ENCODE = Global("_codecs", "encode")  # how protocols 0-2 pickle bytes
_MAX_DEPTH = 32  # nested structured/subarray dtypes; numpy's own pickles stay far below
_STATE_NAMES = ("version", "byte order", "subarray", "names", "fields", "elsize", "alignment",
                "flags", "metadata")
_ALIGNED_STRUCT = 0x80  # NPY_ALIGNED_STRUCT in the flags


class _Forged(Exception):
    """The state is not the one numpy writes; the message says where."""


def _dtype_class(value: Any) -> bool:
    """Does ``value`` name numpy's dtype type or one of its ``numpy.dtypes`` classes?"""
    return isinstance(value, Global) and value.module.split(".")[0] == "numpy" and (
        value.name == "dtype" or value.name.endswith("DType"))


def check_dtype_call(ctx: ScanContext, func: Any, args: Any, location: str) -> None:
    """Judge a call of ``numpy.dtype``: numpy writes ``(code, align, copy)`` with a string code
    and two flags; other arguments are a WARNING ``odd-numpy-dtype-call`` (numpy may warn on
    them, or read them in ways the state check does not cover)."""
    if func != _DTYPE:
        return
    if isinstance(args, tuple) and 1 <= len(args) <= 3 and type(args[0]) is str and all(
            type(a) in (bool, int) and a in (0, 1) for a in args[1:]):
        return
    shown = (f"({', '.join(_describe(a) for a in args[:3])}{', ...' if len(args) > 3 else ''})"
             if isinstance(args, tuple) else _describe(args))
    ctx.add(Severity.WARNING, "odd-numpy-dtype-call",
            f"numpy.dtype is called with {shown}, not (code, align, copy) as numpy writes it",
            location, "numpy", "dtype")


def check_dtype_build(ctx: ScanContext, obj: Call, state: Any, location: str) -> None:
    """Judge a ``BUILD`` of ``state`` onto ``obj`` (called before ``obj.state`` is set); add a
    CRITICAL ``forged-numpy-dtype`` finding when it could give numpy a dtype it never writes."""
    func, args = obj.func, obj.args
    if func == _DTYPE:
        if obj.state is not None:
            problem: str | None = ("a second BUILD on the same numpy.dtype would change a dtype "
                                   "that arrays may already use; numpy never writes one")
        else:
            problem = dtype_state_problem(Call(func, args), state)
    elif _dtype_class(func) or (func == _RECONSTRUCTOR and isinstance(args, tuple)
                                and any(_dtype_class(a) for a in args[:2])):
        problem = ("a dtype built other than by numpy.dtype(code, align, copy) gets a BUILD "
                   "state; numpy never writes one, and dtype.__setstate__ trusts it")
    else:
        return
    if problem is not None:
        ctx.add(Severity.CRITICAL, "forged-numpy-dtype", f"BUILD of a numpy dtype: {problem}",
                location, "numpy", "dtype")


def dtype_state_problem(call: Call, state: Any = None) -> str | None:
    """Why ``numpy.dtype(*call.args)`` + ``BUILD state`` is not what numpy writes, or None.

    Args:
        call: the symbolic ``numpy.dtype(...)`` call.
        state: its BUILD state (default: ``call.state``).
    """
    if state is not None:
        call = _with_state(call, state)
    try:
        import numpy as np  # noqa: PLC0415 - only pickles that build dtypes need numpy

        real = _rebuild(np, call, 0)
        _compare_dtype(np, real, call, "dtype")
    except _Forged as exc:
        return str(exc)
    except RecursionError:
        return "the dtype is nested too deeply to check"
    except Exception as exc:  # noqa: BLE001 - numpy refusing the parts is itself the finding
        return f"numpy rejects the dtype it describes ({type(exc).__name__}: {exc})"[:300]
    return None


def _with_state(call: Call, state: Any) -> Call:
    copy = Call(call.func, call.args)
    copy.state = state
    return copy


def _describe(value: Any) -> str:
    if isinstance(value, (str, bytes, int, float, type(None))):
        return repr(value)[:60]
    return f"a {type(value).__name__}"


def _as_bytes(value: Any) -> Any:
    """``_codecs.encode(text, "latin1")`` (bytes at protocols 0-2) as the bytes it makes."""
    if isinstance(value, Call) and value.func == _ENCODE and isinstance(value.args, tuple) \
            and len(value.args) == 2 and type(value.args[0]) is str \
            and value.args[1] in ("latin1", "latin-1"):
        try:
            return value.args[0].encode("latin-1")
        except UnicodeEncodeError:
            return value
    return value


def _const(value: Any, kind: type, where: str) -> Any:
    if kind is bytes:
        value = _as_bytes(value)
    if type(value) is not kind:
        raise _Forged(f"{where} is {_describe(value)}, not a constant {kind.__name__}")
    return value


def _parts(call: Any, depth: int, where: str) -> tuple[str, tuple[Any, ...]]:
    if depth > _MAX_DEPTH:
        raise _Forged(f"{where}: dtypes nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(call, Call) or call.func != _DTYPE:
        raise _Forged(f"{where} is {_describe(call)}, not a numpy.dtype(...) call")
    args, state = call.args, call.state
    if not isinstance(args, tuple) or len(args) != 3:
        raise _Forged(f"{where}: numpy.dtype is called with {_describe(args)}, not "
                      "(code, align, copy)")
    if not isinstance(state, tuple) or len(state) not in (8, 9):
        raise _Forged(f"{where}: the BUILD state is {_describe(state)}, not numpy's 8- or "
                      "9-item tuple")
    return _const(args[0], str, f"{where} code"), state


def _rebuild(np: Any, call: Any, depth: int, where: str = "dtype") -> Any:
    """The dtype numpy's validating constructors make from the call's structural parts."""
    code, state = _parts(call, depth, where)
    metadata = _metadata(state, where)
    sub, names = state[2], state[3]
    if sub is not None:
        if not isinstance(sub, tuple) or len(sub) != 2:
            raise _Forged(f"{where} subarray is {_describe(sub)}, not (base, shape)")
        base = _rebuild(np, sub[0], depth + 1, f"{where} subarray base")
        shape = _int_tuple(sub[1], f"{where} subarray shape")
        real = np.dtype((base, shape))
    elif names is not None:
        real = _rebuild_struct(np, state, depth, where)
    else:
        real = np.dtype(code)
        if real.kind in "mM":
            real = np.dtype(f"{code}{_datetime_unit(state, where)}")
        if state[1] in ("<", ">"):
            real = real.newbyteorder(state[1])
    return real if metadata is None else np.dtype(real, metadata=metadata)


def _rebuild_struct(np: Any, state: tuple[Any, ...], depth: int, where: str) -> Any:
    names, fields = state[3], state[4]
    if not isinstance(names, tuple) or not isinstance(fields, DictValue):
        raise _Forged(f"{where}: structured names/fields are {_describe(names)}/"
                      f"{_describe(fields)}, not a tuple and a dict")
    formats, offsets, titles = [], [], []
    for name in names:
        spec = fields.get(_const(name, str, f"{where} field name"))
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise _Forged(f"{where} field {name!r} is {_describe(spec)}, not (dtype, offset"
                          "[, title])")
        formats.append(_rebuild(np, spec[0], depth + 1, f"{where} field {name!r}"))
        offsets.append(_const(spec[1], int, f"{where} field {name!r} offset"))
        titles.append(spec[2] if len(spec) == 3 else None)
    for title in titles:
        if title is not None:
            _const(title, str, f"{where} field title")
    flags = _const(state[7], int, f"{where} flags")
    return np.dtype({"names": list(names), "formats": formats, "offsets": offsets,
                     "titles": titles, "itemsize": _const(state[5], int, f"{where} elsize"),
                     "aligned": bool(flags & _ALIGNED_STRUCT)})


def _datetime_unit(state: tuple[Any, ...], where: str) -> str:
    extra = state[8] if len(state) == 9 else None
    if not isinstance(extra, tuple) or len(extra) != 2 or not isinstance(extra[1], tuple) \
            or len(extra[1]) != 4:
        raise _Forged(f"{where}: a datetime dtype without its (unit, num, den, events) metadata")
    unit = _const(extra[1][0], bytes, f"{where} datetime unit")
    num = _const(extra[1][1], int, f"{where} datetime multiple")
    if not unit.isalpha() or not unit.isascii():
        raise _Forged(f"{where}: datetime unit {unit!r} is not a unit name")
    return "" if unit == b"generic" else f"[{num}{unit.decode('ascii')}]"


def _metadata(state: tuple[Any, ...], where: str) -> dict[str, int] | None:
    """A placeholder when the pickle carries a metadata dict (its contents are plain data that
    numpy never reads; the walker judged any calls in it), else None."""
    if len(state) != 9:
        return None
    extra = state[8]
    if isinstance(extra, tuple) and len(extra) == 2:  # datetime: (metadata, unit tuple)
        extra = extra[0]
    if extra is None:
        return None
    if not isinstance(extra, DictValue):
        raise _Forged(f"{where} metadata is {_describe(extra)}, not a dict")
    return {"bastion-placeholder": 0}


def _int_tuple(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise _Forged(f"{where} is {_describe(value)}, not a tuple")
    return tuple(_const(v, int, where) for v in value)


def _compare_dtype(np: Any, real: Any, call: Any, where: str) -> None:
    reduced = real.__reduce__()
    if len(reduced) != 3 or reduced[0] is not np.dtype:
        raise _Forged(f"{where}: numpy does not pickle this dtype as numpy.dtype(...) + BUILD")
    _, args, state = reduced
    if not isinstance(call, Call) or call.func != _DTYPE:
        raise _Forged(f"{where} is {_describe(call)}, not a numpy.dtype(...) call")
    _same(np, args, call.args, f"{where} arguments")
    sym = call.state
    if not isinstance(sym, tuple) or len(sym) != len(state):
        raise _Forged(f"{where}: the BUILD state has {_describe(sym)} items where numpy writes "
                      f"{len(state)}")
    for i, (want, got) in enumerate(zip(state, sym, strict=True)):
        label = f"{where} state[{i}] ({_STATE_NAMES[i]})"
        if i == 8:  # metadata: only its shape is compared (see _metadata)
            _same_metadata(np, want, got, label)
        elif i == 7 and type(got) is int and 128 <= want < 256 and got == want - 256:
            continue  # numpy 1.x kept the flags in a C char: 144 (aligned struct) wrote -112
        else:
            _same(np, want, got, label)


def _same_metadata(np: Any, want: Any, got: Any, where: str) -> None:
    if isinstance(want, tuple):  # datetime: (metadata or None, unit tuple)
        if not isinstance(got, tuple) or len(got) != 2:
            raise _Forged(f"{where} is {_describe(got)}, numpy writes (metadata, unit)")
        _same(np, want[1], got[1], f"{where} datetime unit")
        want, got = want[0], got[0]
    if (want is None) != (got is None) or not (got is None or isinstance(got, DictValue)):
        raise _Forged(f"{where} is {_describe(got)}, numpy writes a dict or None")


def _same(np: Any, want: Any, got: Any, where: str) -> None:
    """``got`` (symbolic) is exactly ``want`` (what numpy writes)."""
    if isinstance(want, np.dtype):
        _compare_dtype(np, want, got, where)
    elif isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            raise _Forged(f"{where} is {_describe(got)}, numpy writes a {len(want)}-tuple")
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            _same(np, w, g, f"{where}[{i}]")
    elif isinstance(want, dict):
        _same_dict(np, want, got, where)
    elif isinstance(want, bool):  # numpy 1.x and Python 2 wrote align/copy as 0/1
        if type(got) not in (bool, int) or got != want:
            raise _Forged(f"{where} is {_describe(got)}, numpy writes {want!r}")
    elif type(want) in (int, str, bytes, type(None)):
        got = _as_bytes(got) if type(want) is bytes else got
        if type(got) is not type(want) or got != want:
            raise _Forged(f"{where} is {_describe(got)}, numpy writes {want!r}")
    else:  # pragma: no cover - numpy's dtype states hold no other types
        raise _Forged(f"{where}: numpy writes a {type(want).__name__}, which is not checked")


def _same_dict(np: Any, want: dict[Any, Any], got: Any, where: str) -> None:
    if not isinstance(got, DictValue):
        raise _Forged(f"{where} is {_describe(got)}, numpy writes a dict")
    keys = [k for k, _ in got]
    if len(keys) != len(want) or not all(type(k) is str for k in keys) \
            or len(set(keys)) != len(keys) or set(keys) != set(want):
        raise _Forged(f"{where} has keys {keys!r:.80}, numpy writes {list(want)!r:.80}")
    for key, value in got:
        _same(np, want[key], value, f"{where}[{key!r}]")
