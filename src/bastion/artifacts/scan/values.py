"""The symbolic values the pickle walker keeps on its stack, and its zero-copy reader."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Call", "DictValue", "Global", "Opaque", "Reader"]


@dataclasses.dataclass(frozen=True)
class Global:
    """An imported global, resolved to constant strings."""

    module: str
    name: str


class Call:
    """The result of calling ``func`` (a REDUCE, NEWOBJ, OBJ or INST); ``state`` is its BUILD."""

    __slots__ = ("args", "func", "state")

    def __init__(self, func: Any, args: Any) -> None:
        self.func = func
        self.args = args
        self.state: Any = None


class Opaque:
    """A value the walker cannot know (an unresolved import, a persistent id, a buffer)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class DictValue(list[tuple[Any, Any]]):
    """A pickled dict as a list of pairs (keys may be unhashable symbolic values)."""

    def get(self, key: Any) -> Any:
        """The value of the first pair whose key equals ``key`` (constants only)."""
        for k, v in self:
            if type(k) is type(key) and k == key:
                return v
        return None


class Reader:
    """A file-like view over bytes for :func:`pickletools.genops`: no copy of the whole buffer,
    and a ``pos`` the walker may move (to skip raw array bytes written inside the stream)."""

    __slots__ = ("buf", "end", "frame_end", "pos")

    def __init__(self, buf: memoryview, start: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = start
        self.frame_end = start  # end of the current protocol-4 FRAME
        self.end = len(buf) if end is None else end

    def read(self, n: int = -1) -> bytes:
        stop = self.end if n < 0 else min(self.end, self.pos + n)
        out = bytes(self.buf[self.pos : stop])
        self.pos = max(self.pos, stop)
        return out

    def readline(self) -> bytes:
        # Lines in pickles are short (numbers, names): look close first, then up to 64 KiB.
        for span in (256, 65536):
            window = bytes(self.buf[self.pos : min(self.end, self.pos + span)])
            cut = window.find(b"\n")
            if cut >= 0:
                break
        line = window if cut < 0 else window[: cut + 1]
        self.pos += len(line)
        return line

    def tell(self) -> int:
        return self.pos
