"""Arguments with which an allowed callable allocates, or computes, without bound.

Shared by the scanner (on the constants a pickle passes) and the restricted unpickler (on the
real values, just before the call): ``range(2**62)`` is lazy, but ``list(range(2**62))`` is a
memory bomb; ``Fraction("1e300000000")`` computes ``10**300000000`` (hours of CPU);
``numpy.core.multiarray._reconstruct(ndarray, (2**40,), "b")`` allocates before its state
arrives. Real checkpoints never need any of these: numpy writes shape ``(0,)``, Fraction pickles
as ``"numerator/denominator"``.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

__all__ = ["MAX_ITEMS", "excessive_call"]

#: Items (or bytes) one call may create from a number in the pickle; real data arrives as bytes.
MAX_ITEMS = 1 << 24
_RATIONAL = re.compile(r"\s*[-+]?\d{1,4300}(/\d{1,4300})?\s*\Z")
#: numpy helpers that allocate an array of a pickled shape first: position of the shape.
_SHAPED = {("numpy.core.multiarray", "_reconstruct"): 1,
           ("numpy._core.multiarray", "_reconstruct"): 1,
           ("numpy.ma.core", "_mareconstruct"): 2}


def _range_len(args: tuple[Any, ...]) -> int | None:
    if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
        return None
    try:
        return len(range(*args))
    except (ValueError, OverflowError):
        return MAX_ITEMS + 1  # a step of 0 raises; a length past sys.maxsize is a bomb


def _fraction_problem(args: tuple[Any, ...]) -> str | None:
    for arg in args:
        if isinstance(arg, str):
            if not _RATIONAL.match(arg):
                return f"Fraction({arg[:40]!r}) is not a plain ratio (exponents cost 10**n)"
        elif not isinstance(arg, (int, float, numbers.Rational)) or isinstance(arg, bool):
            return "Fraction of a value that is not an int, float or plain ratio string"
    return None


def excessive_call(module: str, name: str, args: Any) -> str | None:
    """Why calling ``module.name(*args)`` would allocate or compute without bound, or None."""
    if not isinstance(args, tuple):
        return None
    key = (module, name)
    if key == ("builtins", "range"):
        n = _range_len(args)
        if n is not None and n > MAX_ITEMS:
            return f"range of {n} items (lazy, but any list(...) of it is a memory bomb)"
    elif key in (("builtins", "bytes"), ("builtins", "bytearray")):
        if args and type(args[0]) is int and args[0] > MAX_ITEMS:
            return f"{name}({args[0]}) allocates more than {MAX_ITEMS} bytes"
    elif key == ("fractions", "Fraction"):
        return _fraction_problem(args)
    elif key in _SHAPED and len(args) > _SHAPED[key]:
        shape = args[_SHAPED[key]]
        dims = shape if isinstance(shape, tuple) else (shape,)
        if all(type(d) is int for d in dims) and (
                any(d < 0 for d in dims) or math.prod(dims) > MAX_ITEMS):
            return f"{name} allocates an array of shape {shape!r} before its data arrives"
    return None
