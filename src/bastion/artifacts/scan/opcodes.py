"""The pickle walker: resolves every import a pickle makes without unpickling anything.

Opcodes come from :func:`pickletools.genops`; a small symbolic machine replays the stack, the
MARK frames and the memo, so that module and name strings built on the stack or fetched back
from the memo are resolved the same way the unpickler would resolve them. Values are kept as
plain Python constants (str, int, bytes, tuples, lists), :class:`Global` for imports and
:class:`Call` for the results of ``REDUCE``/``NEWOBJ``/``OBJ``/``INST``; nothing is imported or
called. Every step is bounded by :class:`~bastion.artifacts.scan.limits.ScanLimits`.

Container framings that write raw bytes *inside* a pickle stream (joblib's arrays) are handled
by a hook called after each ``BUILD`` that may move the read position.
"""

from __future__ import annotations

import dataclasses
import pickletools
from collections.abc import Callable
from typing import Any

from bastion.artifacts.scan.bounds import excessive_call
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.numpy_dtypes import check_dtype_build, check_dtype_call
from bastion.artifacts.scan.policy import ImportClass, normalise
from bastion.artifacts.scan.streamchecks import (
    TYPE_TAGS,
    FrameTracker,
    byte_constants,
    check_memo_index,
    consumed_call,
    forwarded_calls,
)
from bastion.artifacts.scan.values import Call, DictValue, Global, Opaque, Reader

__all__ = ["BuildHook", "Call", "DictValue", "Global", "MachineState", "PickleWalk", "Reader",
           "walk_pickle"]


@dataclasses.dataclass
class PickleWalk:
    """What one stream walk learned.

    Attributes:
        end: offset just past ``STOP``, or None when the stream did not parse to the end.
        top: the symbolic value the stream returns (None if unknown).
        risky: the stream reached an import, a call or a persistent id before ending or failing.
        persistent_ids: every persistent id, in order (torch storages).
        error: why the walk stopped early, if it did.
    """

    end: int | None = None
    top: Any = None
    risky: bool = False
    persistent_ids: list[Any] = dataclasses.field(default_factory=list)
    error: str | None = None


#: The walker's state (stack, MARK frames, memo), for a fork that reads on another way.
MachineState = tuple[list[Any], list[list[Any]], dict[int, Any]]

#: Called after BUILD as ``hook(obj, reader, walk_location, state) -> None``; may move
#: ``reader.pos``.
BuildHook = Callable[[Call, Reader, str, MachineState], None]

_CONST_OPS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BINBYTES",
    "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "FLOAT", "BINFLOAT",
})
_FIXED = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_SEVERITY = {ImportClass.SAFE: Severity.INFO, ImportClass.UNKNOWN: Severity.WARNING,
             ImportClass.DANGEROUS: Severity.CRITICAL}
_KIND = {ImportClass.SAFE: "allowed-import", ImportClass.UNKNOWN: "unknown-import",
         ImportClass.DANGEROUS: "dangerous-import"}


class _LimitError(Exception):
    pass


class _Machine:
    """The symbolic stack machine for one stream."""

    def __init__(self, ctx: ScanContext, location: str, hook: BuildHook | None) -> None:
        self.ctx = ctx
        self.loc = location
        self.hook = hook
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.walk = PickleWalk()
        self.frames = FrameTracker(ctx, location)
        self.count = 0  # opcodes read so far

    # -- helpers -------------------------------------------------------------------------------

    def _at(self, pos: int) -> str:
        return f"{self.loc}@{pos}"

    def _pop(self) -> Any:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise ValueError("MARK expected")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def _push(self, value: Any) -> None:
        self.stack.append(value)
        if len(self.stack) > self.ctx.limits.max_stack:
            raise _LimitError(f"more than {self.ctx.limits.max_stack} items on the stack")

    def _import(self, module: str, name: str, pos: int, via: str) -> Global:
        self.walk.risky = True
        verdict = self.ctx.policy.classify(module, name)
        what = {ImportClass.SAFE: "is on the allowlist",
                ImportClass.UNKNOWN: "is not on the allowlist (allow it with --allow if you "
                                     "trust it)",
                ImportClass.DANGEROUS: "can run code or touch the system"}[verdict]
        # One finding per import per stream: the location is the stream, not each offset.
        self.ctx.add(_SEVERITY[verdict], _KIND[verdict],
                     f"{via} imports {module}.{name}, which {what}", self.loc, module, name)
        return Global(*normalise(module, name))  # what the unpickler imports (fix_imports)

    def _call(self, func: Any, args: Any, op: str, pos: int) -> Call:
        """A call the unpickler makes: judge the callee, its arguments, the calls it makes in
        turn, and any nested pickle or archive passed to it as bytes."""
        self._callee(func, op, pos)
        self._arguments(func, args, op, pos)
        check_dtype_call(self.ctx, func, args, self._at(pos))
        for inner, inner_args in forwarded_calls(func, args):
            via = f"{op} of {func.module}.{func.name}"
            self._callee(inner, via, pos)
            self._arguments(inner, inner_args, via, pos)
        nested = self.ctx.scan_nested
        if nested is not None:
            for blob in byte_constants(args):
                nested(self.ctx, memoryview(blob), f"{self._at(pos)}+bytes")
        return Call(func, args)

    def _arguments(self, func: Any, args: Any, op: str, pos: int) -> None:
        if not isinstance(func, Global):
            return
        problem = excessive_call(func.module, func.name, args)
        if problem is not None:
            self.ctx.add(Severity.WARNING, "allocation-bomb", f"{op}: {problem}", self._at(pos),
                         func.module, func.name)
        if consumed_call(func, args):
            self.ctx.add(Severity.WARNING, "iterates-call",
                         f"{op} calls {func.module}.{func.name} on a value built by another call, "
                         "which may be lazy and unbounded (list(range(2**40)) is a memory bomb)",
                         self._at(pos), func.module, func.name)

    def _callee(self, func: Any, op: str, pos: int) -> None:
        self.walk.risky = True
        if isinstance(func, Global):
            if func in TYPE_TAGS:
                self.ctx.add(Severity.WARNING, "type-called",
                             f"{op} calls {func.module}.{func.name}, which checkpoints only name "
                             "as a type: called directly it allocates whatever size the pickle "
                             "asks for", self._at(pos), func.module, func.name)
            return
        if isinstance(func, Opaque):
            return  # already reported (unresolved import / EXT)
        self.ctx.add(Severity.CRITICAL, "indirect-call",
                     f"{op} calls a value that is not an imported global ({type(func).__name__}"
                     "): the callable was produced by earlier calls, which a scanner cannot "
                     "judge", self._at(pos))

    # -- opcodes ---------------------------------------------------------------------------------

    def step(self, name: str, arg: Any, pos: int, reader: Reader) -> None:  # noqa: C901, PLR0912
        st = self.stack
        if name in _CONST_OPS:
            self._push(arg)
        elif name in _FIXED:
            self._push(_FIXED[name])
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            self._push([])
        elif name == "EMPTY_DICT":
            self._push(DictValue())
        elif name == "MARK":
            if len(self.marks) >= self.ctx.limits.max_nesting:
                raise _LimitError(f"MARK nesting deeper than {self.ctx.limits.max_nesting}")
            self.marks.append(self.stack)
            self.stack = []
        elif name in ("TUPLE", "LIST", "FROZENSET"):
            items = self._pop_mark()
            self._push(tuple(items) if name == "TUPLE" else items)
        elif name == "DICT":
            items = self._pop_mark()
            self._push(DictValue(zip(items[::2], items[1::2], strict=False)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(st) < n:
                raise ValueError("stack underflow")
            items = st[-n:]
            del st[-n:]
            self._push(tuple(items))
        elif name == "APPEND":
            value = self._pop()
            self._extend(st, [value])
        elif name in ("APPENDS", "ADDITEMS"):
            items = self._pop_mark()
            self._extend(self.stack, items)
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            self._setitems(st, [key, value])
        elif name == "SETITEMS":
            items = self._pop_mark()
            self._setitems(self.stack, items)
        elif name == "POP":
            if st:
                st.pop()
            else:
                self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            if not st:
                raise ValueError("stack underflow")
            self._push(st[-1])
        elif name in _MEMO_PUT or name == "MEMOIZE":
            if not st:
                raise ValueError("memo store from an empty stack")
            key = len(self.memo) if name == "MEMOIZE" else int(arg)
            check_memo_index(self.ctx, self._at(pos), name, key, self.count)
            if key not in self.memo and len(self.memo) >= self.ctx.limits.max_memo:
                raise _LimitError(f"more than {self.ctx.limits.max_memo} memo entries")
            self.memo[key] = st[-1]
        elif name in _MEMO_GET:
            if int(arg) not in self.memo:
                check_memo_index(self.ctx, self._at(pos), name, int(arg), self.count)
                raise ValueError(f"{name} of memo key {arg}, which was never set (the "
                                 "unpickler rejects this malformed stream)")
            self._push(self.memo[int(arg)])
        elif name in ("GLOBAL", "INST"):
            module, gname = _read_pair(reader, pos)
            glob = self._import(module, gname, pos, name)
            if name == "INST":
                args = self._pop_mark()
                self._push(self._call(glob, tuple(args), name, pos))
            else:
                self._push(glob)
        elif name == "STACK_GLOBAL":
            gname, module = self._pop(), self._pop()
            if type(module) is str and type(gname) is str:
                self._push(self._import(module, gname, pos, name))
            else:
                self.walk.risky = True
                self.ctx.add(Severity.CRITICAL, "unresolved-import",
                             "STACK_GLOBAL takes its module or name from a value that is not a "
                             "constant string; the import cannot be judged", self._at(pos))
                self._push(Opaque("unresolved import"))
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.walk.risky = True
            self.ctx.add(Severity.CRITICAL, "ext-opcode",
                         f"{name} {arg} imports whatever the copyreg extension registry of the "
                         "loading process maps this code to; it cannot be judged", self._at(pos))
            self._push(Opaque("extension"))
        elif name == "REDUCE":
            args, func = self._pop(), self._pop()
            self._push(self._call(func, args, name, pos))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            kwargs = self._pop() if name == "NEWOBJ_EX" else None
            args, cls = self._pop(), self._pop()
            self._push(self._call(cls, args if kwargs is None else (args, kwargs), name, pos))
        elif name == "OBJ":
            items = self._pop_mark()
            if not items:
                raise ValueError("OBJ without a class")
            self._push(self._call(items[0], tuple(items[1:]), name, pos))
        elif name == "BUILD":
            state = self._pop()
            if not st:
                raise ValueError("BUILD on an empty stack")
            self._build(st[-1], state, pos, reader)
        elif name in ("PERSID", "BINPERSID"):
            pid = arg if name == "PERSID" else self._pop()
            self.walk.risky = True
            self.walk.persistent_ids.append(pid)
            self._push(Opaque("persistent id"))
        elif name == "NEXT_BUFFER":
            self._push(Opaque("out-of-band buffer"))
        elif name == "FRAME":
            self.frames.on_frame(reader, int(arg), pos)
        elif name in ("PROTO", "READONLY_BUFFER", "STOP"):
            pass
        else:  # pragma: no cover - genops knows no other opcodes
            raise ValueError(f"unhandled opcode {name}")

    def _extend(self, stack: list[Any], items: list[Any]) -> None:
        if not stack:
            raise ValueError("append to an empty stack")
        target = stack[-1]
        if isinstance(target, list) and not isinstance(target, DictValue):
            target.extend(items)

    def _setitems(self, stack: list[Any], items: list[Any]) -> None:
        if not stack:
            raise ValueError("setitem on an empty stack")
        target = stack[-1]
        if isinstance(target, DictValue):
            target.extend(zip(items[::2], items[1::2], strict=False))

    def _build(self, obj: Any, state: Any, pos: int, reader: Reader) -> None:
        if isinstance(obj, (Global, Opaque)):
            self.walk.risky = True
            self.ctx.add(Severity.CRITICAL, "build-on-global",
                         "BUILD sets attributes on an imported class or function itself, which "
                         "changes it for the whole process", self._at(pos),
                         getattr(obj, "module", None), getattr(obj, "name", None))
            return
        if isinstance(obj, Call):
            check_dtype_build(self.ctx, obj, state, self._at(pos))
            obj.state = state
            if self.hook is not None:
                self.hook(obj, reader, self.loc, (self.stack, self.marks, self.memo))


def _read_pair(reader: Reader, pos: int) -> tuple[str, str]:
    """The two newline-terminated strings after GLOBAL/INST at ``pos``, decoded as the unpickler
    does (UTF-8), not as pickletools shows them (joined with a space, which is ambiguous)."""
    saved = reader.pos
    reader.pos = pos + 1
    module, name = reader.readline(), reader.readline()
    reader.pos = saved
    if not module.endswith(b"\n") or not name.endswith(b"\n"):
        raise ValueError("GLOBAL names are not newline-terminated")
    return module[:-1].decode("utf-8"), name[:-1].decode("utf-8")


def walk_pickle(buf: memoryview, start: int, ctx: ScanContext, location: str, *,
                end: int | None = None, hook: BuildHook | None = None,
                state: MachineState | None = None) -> PickleWalk:
    """Walk one pickle stream starting at ``buf[start]``, recording findings in ``ctx``.

    Never raises on bad input: a stream that does not parse, or that hits a limit, returns with
    ``error`` set and ``end`` None. The caller decides how loud a parse error is (a stream that
    never reached an import cannot have run code).

    Args:
        buf: the bytes holding the stream (not copied).
        start: offset of the first opcode.
        ctx: the file's scan context (policy, limits, findings).
        location: a label for findings, e.g. ``archive/data.pkl``.
        end: where the readable bytes stop (default: end of ``buf``).
        hook: called after each BUILD (joblib framing).
        state: start from a copy of another walk's state (a fork that reads on differently).
    """
    machine = _Machine(ctx, location, hook)
    if state is not None:
        stack, marks, memo = state
        machine.stack, machine.marks = list(stack), [list(m) for m in marks]
        machine.memo = dict(memo)
    reader = Reader(buf, start, end)
    walk = machine.walk
    ctx.streams += 1
    if ctx.streams > ctx.limits.max_streams:
        walk.error = f"more than {ctx.limits.max_streams} pickle streams"
        ctx.add(Severity.WARNING, "limit-exceeded", walk.error, location)
        return walk
    count = 0
    last = start
    try:
        for op, arg, pos in pickletools.genops(reader):  # type: ignore[arg-type]
            last = pos if pos is not None else last
            count += 1
            if count > ctx.limits.max_opcodes:
                raise _LimitError(f"more than {ctx.limits.max_opcodes} opcodes")
            machine.count = count
            machine.frames.after_opcode(reader, last, reader.pos)
            machine.step(op.name, arg, last, reader)
            if op.name == "STOP":
                walk.end = reader.pos
                walk.top = machine.stack[-1] if machine.stack else None
                if len(machine.stack) != 1 or machine.marks:
                    ctx.add(Severity.WARNING, "malformed-pickle",
                            "STOP with an unbalanced stack: the unpickler would reject this "
                            "stream only after running what came before", f"{location}@{last}")
                return walk
        walk.error = "stream ended without STOP (truncated)"
    except _LimitError as exc:
        walk.error = str(exc)
        ctx.add(Severity.WARNING, "limit-exceeded",
                f"stopped reading the pickle: {exc}; the rest was not checked",
                f"{location}@{last}")
    except RecursionError:
        walk.error = "nesting too deep"
    except Exception as exc:  # noqa: BLE001 - any parse failure of hostile bytes is a finding
        walk.error = f"{type(exc).__name__}: {exc}"[:300]
    return walk
