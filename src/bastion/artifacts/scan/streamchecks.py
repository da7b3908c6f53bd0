"""Checks on a pickle stream that go beyond its imports: things the unpickler does with the
bytes that a loader's host pays for (memo arrays, frames) or that call values the pickle chose.

* **Memo indices.** CPython's C unpickler keeps the memo in an array that it resizes to the
  largest ``PUT`` index, so ``LONG_BINPUT 0x7fffffff`` makes it allocate 16 GB before anything
  else happens. A real pickler numbers memo entries 0, 1, 2, ...: an index beyond the number of
  opcodes read so far (plus slack for picklers whose memo outlives one ``dump``) is hostile.
* **Frames.** Protocol 4 ``FRAME`` opcodes announce the length of the bytes that follow. The C
  unpickler asks its file for that many bytes at once (a buffered file allocates them); the
  Python one refuses frames that do not tile the stream. A frame that runs past the end, starts
  inside another frame or is straddled by an opcode means the two disagree.
* **Call-through arguments and bounds.** Some allowed callables call one of their arguments:
  ``copyreg._reconstructor(cls, base, state)`` calls ``base``, torch's ``_rebuild_from_type``
  calls ``func(*args)``. Those arguments are callees like a ``REDUCE``'s and get the same checks,
  including :func:`~bastion.artifacts.scan.bounds.excessive_call` and "iterates a value built by
  a call" (``list(range(2**40))``).
* **Nested content.** Bytes constants handed to a callable may themselves be a pickle or an
  archive (``torch.storage._load_from_bytes(b"PK...")`` is a whole ``torch.load``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.values import Call, Global, Reader

__all__ = ["CONSUMERS", "TYPE_TAGS", "FrameTracker", "byte_constants", "check_memo_index",
           "consumed_call", "forwarded_calls"]

#: Memo indices a pickler that reuses its memo across several dumps could legitimately reach.
_MEMO_SLACK = 1 << 16

#: Allowed callables that call one of their arguments: ``(callee index, args index)``, where
#: args index -1 means the callee gets no arguments from the pickle and a negative index -2 - k
#: means it gets ``(args[k],)``.
_FORWARDS: dict[Global, tuple[int, int]] = {
    Global("copyreg", "_reconstructor"): (1, -2 - 2),  # base.__new__(cls, state); base(state)
    Global("torch._tensor", "_rebuild_from_type_v2"): (0, 2),  # func(*args)
    Global("torch._tensor", "_rebuild_from_type"): (0, 2),
    Global("collections", "defaultdict"): (0, -1),  # the factory, on every missing key
    Global("sklearn.metrics._dist_metrics", "newObj"): (0, -1),  # cls.__new__(cls)
    Global("sklearn.neighbors._kd_tree", "newObj"): (0, -1),
    Global("sklearn.neighbors._ball_tree", "newObj"): (0, -1),
}

#: Allowed globals that real checkpoints only ever *name* (as a type to rebuild into), never call:
#: calling them allocates by an integer the pickle chooses (``torch.Tensor(10**10)``), which a
#: following ``list(...)`` turns into a memory bomb.
TYPE_TAGS: frozenset[Global] = frozenset({
    Global("torch", "Tensor"),
    Global("torch.nn.parameter", "Parameter"),
    Global("torch.nn.parameter", "Buffer"),
    Global("numpy", "ndarray"),
    Global("numpy.ma.core", "MaskedArray"),
    Global("torch.storage", "TypedStorage"),
    Global("torch.storage", "UntypedStorage"),
})


def check_memo_index(ctx: ScanContext, location: str, op: str, key: int, opcodes: int) -> None:
    """Report a memo index no real pickler writes (the unpickler would size its memo by it)."""
    if 0 <= key < ctx.limits.max_memo and key <= opcodes + _MEMO_SLACK:
        return
    ctx.add(Severity.WARNING, "memo-bomb",
            f"{op} uses memo index {key} after {opcodes} opcodes: CPython's unpickler grows its "
            "memo array to that index (a memory bomb); no pickler writes such indices", location)


class FrameTracker:
    """Follows protocol 4 frames the way the pure-Python unpickler enforces them."""

    def __init__(self, ctx: ScanContext, location: str) -> None:
        self.ctx = ctx
        self.loc = location

    def _report(self, pos: int, why: str) -> None:
        self.ctx.add(Severity.WARNING, "frame-anomaly",
                     f"{why}: the C and Python unpicklers read this stream differently, and a "
                     "buffered file would allocate the announced length", f"{self.loc}@{pos}")

    def on_frame(self, reader: Reader, length: int, pos: int) -> None:
        """A ``FRAME`` opcode at ``pos`` (``reader.pos`` is just past its length field)."""
        if pos < reader.frame_end:
            self._report(pos, "a frame starts before the previous frame ended")
        if reader.pos + length > reader.end:
            self._report(pos, f"the frame announces {length} bytes but only "
                              f"{reader.end - reader.pos} follow")
        reader.frame_end = reader.pos + length

    def after_opcode(self, reader: Reader, pos: int, end: int) -> None:
        """Any opcode that starts at ``pos`` and ends at ``end`` (before it runs)."""
        if pos < reader.frame_end < end:
            self._report(pos, "an opcode straddles the end of its frame")


#: Allowed callables that iterate their first argument into memory (``list(x)``, ...).
CONSUMERS: frozenset[Global] = frozenset({
    *(Global("builtins", n) for n in ("list", "tuple", "set", "frozenset", "dict", "bytearray",
                                      "bytes", "str")),
    *(Global("collections", n) for n in ("deque", "Counter", "OrderedDict")),
    Global("torch", "Size"),
})


def consumed_call(func: Any, args: Any) -> bool:
    """Does ``func(*args)`` iterate into memory a value that an earlier call produced?

    Pickles of real containers pass constants (``set([1, 2])``, ``torch.Size((2, 3))``); an
    argument built by a call (``range(2**40)``, a huge meta tensor, ...) can be lazy and
    enormous, and iterating it is a memory bomb no allowlist entry on its own reveals.
    """
    if func not in CONSUMERS or not isinstance(args, tuple):
        return False
    return any(not _constant(a) for a in args[:1])


def _constant(value: Any) -> bool:
    """Constants and containers written with opcodes are bounded by the file's size."""
    return isinstance(value, (str, bytes, bytearray, int, float, complex, tuple, list,
                              type(None))) or (isinstance(value, Call) and
                                               _latin1_bytes(value) is not None)


def forwarded_calls(func: Any, args: Any) -> Iterator[tuple[Any, Any]]:
    """The calls that ``func(*args)`` makes in turn, as ``(callee, its args)`` pairs; the args
    are ``()`` where the pickle does not choose them. ``copyreg._reconstructor(cls, base,
    state)`` also creates the instance through ``cls``, reported as a call of ``cls``."""
    spec = _FORWARDS.get(func) if isinstance(func, Global) else None
    if spec is None or not isinstance(args, tuple):
        return
    callee, given = spec
    if func.name == "_reconstructor" and args:
        yield args[0], ()
    if callee >= len(args):
        return
    if given == -1:
        yield args[callee], ()
    elif given < -1:
        k = -2 - given
        yield args[callee], (args[k],) if k < len(args) else ()
    else:
        yield args[callee], args[given] if given < len(args) else ()


def byte_constants(value: Any, depth: int = 0) -> Iterator[bytes]:
    """Bytes constants inside a call's arguments (a few levels deep; dicts are pair lists)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) >= 4:
            yield bytes(value)
    elif depth < 3 and isinstance(value, (tuple, list)):
        for item in value[:64]:
            yield from byte_constants(item, depth + 1)
    elif depth < 3 and isinstance(value, Call):
        latin = _latin1_bytes(value)
        if latin is not None:
            yield from byte_constants(latin, depth)
        else:
            yield from byte_constants(value.args, depth + 1)


_ENCODE = Global("_codecs", "encode")


def _latin1_bytes(call: Call) -> bytes | None:
    """Protocols 0-2 write bytes as ``_codecs.encode(text, "latin1")``: the bytes it makes."""
    args = call.args
    if call.func != _ENCODE or not isinstance(args, tuple) or len(args) != 2:
        return None
    text, codec = args
    if not isinstance(text, str) or codec not in ("latin1", "latin-1", "iso-8859-1"):
        return None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None
