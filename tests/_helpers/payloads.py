"""Builders of HARMLESS malicious model files, for scanner and loader tests.

Every payload only creates an empty marker file (a path the test chooses, inside its temp dir),
so a test can prove that the payload really runs under the loader it targets, and then that the
scanner (and ``bastion.load``) refuse it. Each kind names one way to hide a pickle payload:

    build(kind, tmp_path, marker) -> Path of the written file
    LOADERS[kind]                 -> the Loader that the payload targets
    fire(kind, path)              -> runs that loader on the file (errors after the payload ran
                                     are swallowed; the marker is the evidence)

``ALL_KINDS`` lists every kind, so a test can loop over them with ``pytest.mark.parametrize``.
"""

from __future__ import annotations

import copyreg
import enum
import io
import pickle
import pickletools
import struct
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ALL_KINDS", "EXT_CODE", "LOADERS", "Loader", "build", "fire", "payload_pickle",
           "prepended_zip"]

#: The copyreg extension code the ``ext-opcode`` payload uses (registered only while firing).
EXT_CODE = 0x7A11


class Loader(enum.Enum):
    """The loader a payload targets."""

    PICKLE = "pickle.load"
    TORCH = "torch.load(weights_only=False)"
    JOBLIB = "joblib.load"
    NUMPY = "numpy.load(allow_pickle=True)"
    ZIP_MEMBER = "pickle.loads(zip member)"  # a loader that reads a non-data.pkl member
    NESTED_TORCH = "torch.load(inner archive member)"


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class _Reduce:
    """An object whose pickle calls ``func(*args)`` on load."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _exec_obj(marker: Path) -> _Reduce:
    return _Reduce(exec, (_code(marker),))


# -- hand-written opcode streams ---------------------------------------------------------------


def _su(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _memo_stack_global(marker: Path) -> bytes:
    """STACK_GLOBAL whose module and name are fetched back from the memo after being popped."""
    return (
        b"\x80\x04"
        + _su("builtins") + b"\x94" + b"0"  # MEMOIZE 0, POP
        + _su("ex") + b"\x94" + b"0"  # decoy, memo 1
        + _su("exec") + b"\x94" + b"0"  # memo 2
        + b"h\x00" + b"h\x02"  # BINGET 0, BINGET 2
        + b"\x93"  # STACK_GLOBAL
        + _su(_code(marker)) + b"\x85" + b"R" + b"."  # TUPLE1 REDUCE STOP
    )


def _ext_opcode(marker: Path) -> bytes:
    """EXT2: the callable comes from the copyreg extension registry, never named in the file."""
    return (
        b"\x80\x02" + b"\x83" + struct.pack("<H", EXT_CODE)
        + b"X" + struct.pack("<I", len(_code(marker).encode())) + _code(marker).encode()
        + b"\x85R."
    )


def _dotted_name(marker: Path) -> bytes:
    """Protocol 4 dotted name: ``logging`` + ``os.system`` reaches os.system by attribute walk."""
    return (
        b"\x80\x04" + _su("logging") + _su("os.system") + b"\x93"
        + _su(f"touch {marker}") + b"\x85R."
    )


def payload_pickle(marker: Path, *, protocol: int = 4, flavour: str = "exec") -> bytes:
    """A pickle that creates ``marker`` when loaded.

    Args:
        marker: file the payload creates.
        protocol: pickle protocol 0-5 (for the object-based flavours).
        flavour: ``exec``, ``posix-system``, ``popen``, ``runpy``, ``unknown-callable``,
            ``memo-stack-global``, ``ext-opcode`` or ``dotted-name``.
    """
    if flavour == "memo-stack-global":
        return _memo_stack_global(marker)
    if flavour == "ext-opcode":
        return _ext_opcode(marker)
    if flavour == "dotted-name":
        return _dotted_name(marker)
    obj: _Reduce
    if flavour == "exec":
        obj = _exec_obj(marker)
    elif flavour == "posix-system":
        import posix  # noqa: PLC0415  (POSIX only, like the test machines)

        obj = _Reduce(posix.system, (f"touch {marker}",))
    elif flavour == "popen":
        import subprocess  # noqa: PLC0415

        obj = _Reduce(subprocess.Popen, (["touch", str(marker)],))
    elif flavour == "runpy":
        import runpy  # noqa: PLC0415

        obj = _Reduce(runpy._run_code, (_code(marker), {}))  # type: ignore[attr-defined]
    elif flavour == "unknown-callable":
        from _helpers.custom_classes import Toucher  # noqa: PLC0415

        # On no list of the scanner's (a user's own class), yet calling it creates the file.
        obj = _Reduce(Toucher, (str(marker),))
    else:
        raise ValueError(f"unknown flavour {flavour!r}")
    return pickle.dumps(obj, protocol=protocol)


# -- containers --------------------------------------------------------------------------------


def _torch_zip(path: Path, marker: Path) -> None:
    import torch  # noqa: PLC0415

    torch.save({"w": torch.ones(3), "p": _exec_obj(marker)}, path)


def _benign_torch_zip_bytes() -> bytes:
    import torch  # noqa: PLC0415

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    return buf.getvalue()


def _torch_zip_extra_member(path: Path, marker: Path) -> None:
    benign = _benign_torch_zip_bytes()
    with zipfile.ZipFile(io.BytesIO(benign)) as src, zipfile.ZipFile(path, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(f"{prefix}/extra/constants", payload_pickle(marker))


def _or_flag(data: bytearray, at: int) -> None:
    """Set a reserved general-purpose flag bit (0x1000) that miniz ignores."""
    struct.pack_into("<H", data, at, struct.unpack_from("<H", data, at)[0] | 0x1000)


def _patch_zip(data: bytearray, *, crc: bool = False, flags: bool = False,
               local_name: bool = False) -> bytearray:
    """Corrupt fields that Python's zipfile checks and torch's miniz reader ignores."""
    pos = 0
    while (pos := data.find(b"PK\x03\x04", pos)) >= 0:
        name_len = struct.unpack_from("<H", data, pos + 26)[0]
        name = bytes(data[pos + 30 : pos + 30 + name_len])
        if crc:
            struct.pack_into("<I", data, pos + 14, 0xDEADBEEF)
        if flags:
            _or_flag(data, pos + 6)
        if local_name and name.endswith(b"data.pkl"):
            data[pos + 30 + name_len - 8 : pos + 30 + name_len] = b"xxxx.pkl"
        pos += 4
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        if crc:
            struct.pack_into("<I", data, pos + 16, 0xDEADBEEF)
        if flags:
            _or_flag(data, pos + 8)
        pos += 4
    return data


def _torch_zip_patched(path: Path, marker: Path, **patch: bool) -> None:
    import torch  # noqa: PLC0415

    buf = io.BytesIO()

    torch.save({"w": torch.ones(3), "p": _exec_obj(marker)}, buf)
    path.write_bytes(bytes(_patch_zip(bytearray(buf.getvalue()), **patch)))


def _split_pickles(data: bytes, count: int) -> list[int]:
    """Offsets just past the first ``count`` pickle streams of a legacy torch file."""
    ends, pos = [], 0
    for _ in range(count):
        for op, _arg, at in pickletools.genops(io.BytesIO(data[pos:])):
            if op.name == "STOP":
                pos += at + 1
                break
        ends.append(pos)
    return ends


def _torch_legacy(path: Path, marker: Path, *, which: int) -> None:
    """Legacy sequential format with the payload in pickle number ``which`` (2 = sys info,
    4 = storage keys), the others left as torch wrote them."""
    import torch  # noqa: PLC0415

    buf = io.BytesIO()
    torch.save({}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    ends = _split_pickles(data, 5)
    starts = [0, *ends[:-1]]
    parts = [data[s:e] for s, e in zip(starts, ends, strict=True)]
    parts[which] = payload_pickle(marker, protocol=2)
    path.write_bytes(b"".join(parts) + data[ends[-1] :])


def _torch_legacy_tar(path: Path, marker: Path) -> None:
    """The pre-1.0 tar format: members ``storages``, ``tensors``, ``pickle``."""
    members = {
        "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": payload_pickle(marker, protocol=2),
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def _joblib(path: Path, marker: Path, compress: Any = 0) -> None:
    import joblib  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    joblib.dump({"a": np.arange(64, dtype=np.float64), "p": _exec_obj(marker)}, path,
                compress=compress)


def _joblib_with(codec: str) -> Callable[[Path, Path], None]:
    return lambda path, marker: _joblib(path, marker, (codec, 3))


def _npy(path: Path, marker: Path) -> None:
    import numpy as np  # noqa: PLC0415

    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = 1, _exec_obj(marker)
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=True)


def _npz(path: Path, marker: Path) -> None:
    import numpy as np  # noqa: PLC0415

    arr = np.empty(1, dtype=object)
    arr[0] = _exec_obj(marker)
    with open(path, "wb") as fh:
        np.savez(fh, x=np.zeros(3), obj=arr)


def _nested_zip(path: Path, marker: Path) -> None:
    inner = io.BytesIO()
    import torch  # noqa: PLC0415

    torch.save({"p": _exec_obj(marker)}, inner)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as outer:
        outer.writestr("README.txt", "weights inside")
        outer.writestr("model/weights.pt", inner.getvalue())


def _polyglot(path: Path, marker: Path) -> None:
    """A pickle at offset 0 with a whole (benign) torch zip appended: scanners that look for the
    end-of-central-directory record call it a zip; ``pickle.load`` runs the pickle."""
    path.write_bytes(payload_pickle(marker) + _benign_torch_zip_bytes())


def _nested_bytes(path: Path, marker: Path) -> None:
    """``pickle.dumps(tensor)`` style: ``torch.storage._load_from_bytes(b"<a whole torch zip>")``
    runs ``torch.load(weights_only=False)`` on the bytes, here a zip with the payload."""
    import torch  # noqa: PLC0415

    inner = io.BytesIO()
    torch.save({"w": torch.ones(2), "p": _exec_obj(marker)}, inner)
    obj = _Reduce(torch.storage._load_from_bytes, (inner.getvalue(),))
    path.write_bytes(pickle.dumps(obj, protocol=2))


def prepended_zip(payload: bytes, prefix: bytes = b"JUNK" * 10) -> bytes:
    """A torch-style zip with ``payload`` in ``archive/extra/constants``, after ``prefix``.

    Offsets stay relative to the zip's own start: miniz (torch) cannot read the result, Python's
    zipfile corrects them and reads every member.
    """
    benign = _benign_torch_zip_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(benign)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("archive/extra/constants", payload)
    return prefix + out.getvalue()


def _prepended(path: Path, marker: Path) -> None:
    path.write_bytes(prepended_zip(payload_pickle(marker)))


def _joblib_dtype_elsize(path: Path, marker: Path) -> None:
    """A joblib array whose pickled dtype state claims ``elsize=1`` for ``f8``: numpy ignores
    elsize for fixed-size dtypes (8 bytes per item), a scanner that trusts it skips 1 per item
    and reads the array bytes as opcodes. Those hide (inside a BINBYTES) the payload that
    joblib, reading on after the real 64 bytes, runs."""
    import joblib  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    buf = io.BytesIO()
    joblib.dump(np.zeros(8), buf)
    data = buf.getvalue()
    head = data[: data.index(b"K\x10ub") + 4]  # ... alignment 16, SETITEMS, BUILD
    head = head.replace(b"J\xff\xff\xff\xff", b"J\x01\x00\x00\x00", 1)  # dtype elsize
    head += data[len(head) : len(head) + 1 + data[len(head)]]  # joblib's alignment padding
    evil = _su("builtins") + _su("exec") + b"\x93" + _su(_code(marker)) + b"\x85R"
    filler = 64 - 8 - 5
    array = b"\x00" * 8 + b"B" + struct.pack("<I", filler + len(evil)) + b"\x00" * filler
    path.write_bytes(head + array + evil + b"0.")


def _joblib_array_opcodes(path: Path, marker: Path) -> None:
    """An older-style joblib wrapper (no alignment padding byte): joblib reads the 512 array
    bytes as data, ``pickle.load`` reads them as the next opcodes - here, the payload."""
    import joblib  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    buf = io.BytesIO()
    joblib.dump(np.zeros(64), buf)
    data = buf.getvalue()
    key = b"\x8c\x1bnumpy_array_alignment_bytes\x94K\x10"
    cut, end = data.index(key), data.index(b"K\x10ub") + 4
    head = b"\x80\x04" + data[11:cut] + data[cut + len(key) : end]  # no FRAME, no alignment
    evil = _su("builtins") + _su("exec") + b"\x93" + _su(_code(marker)) + b"\x85R0"
    assert len(evil) < 512
    array = (evil + b"N0" * 256)[:512]
    path.write_bytes(head + array + b".")


def _plain(protocol: int, flavour: str = "exec") -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(payload_pickle(marker, protocol=protocol, flavour=flavour))

    return write


_BUILDERS: dict[str, tuple[str, Loader, Callable[[Path, Path], None]]] = {
    **{f"pickle-p{p}": (f"model_p{p}.pkl", Loader.PICKLE, _plain(p)) for p in range(6)},
    "pickle-posix-system": ("m.pkl", Loader.PICKLE, _plain(2, "posix-system")),
    "pickle-popen": ("m.pkl", Loader.PICKLE, _plain(2, "popen")),
    "pickle-runpy": ("m.pkl", Loader.PICKLE, _plain(4, "runpy")),
    "pickle-unknown-callable": ("m.pkl", Loader.PICKLE, _plain(4, "unknown-callable")),
    "pickle-memo-stack-global": ("m.pkl", Loader.PICKLE, _plain(4, "memo-stack-global")),
    "pickle-ext-opcode": ("m.pkl", Loader.PICKLE, _plain(2, "ext-opcode")),
    "pickle-dotted-name": ("m.pkl", Loader.PICKLE, _plain(4, "dotted-name")),
    "torch-zip": ("model.pt", Loader.TORCH, _torch_zip),
    "torch-zip-extra-member": ("model.pt", Loader.ZIP_MEMBER, _torch_zip_extra_member),
    "torch-zip-bad-crc": ("model.pt", Loader.TORCH,
                          lambda p, m: _torch_zip_patched(p, m, crc=True)),
    "torch-zip-odd-flags": ("model.pt", Loader.TORCH,
                            lambda p, m: _torch_zip_patched(p, m, flags=True)),
    "torch-zip-local-name": ("model.pt", Loader.TORCH,
                             lambda p, m: _torch_zip_patched(p, m, local_name=True)),
    "torch-legacy-sysinfo": ("model.pt", Loader.TORCH,
                             lambda p, m: _torch_legacy(p, m, which=2)),
    "torch-legacy-keys": ("model.pt", Loader.TORCH,
                          lambda p, m: _torch_legacy(p, m, which=4)),
    "torch-legacy-tar": ("model.pt", Loader.TORCH, _torch_legacy_tar),
    "joblib": ("model.joblib", Loader.JOBLIB, _joblib),
    **{f"joblib-{c}": ("model.joblib", Loader.JOBLIB, _joblib_with(c))
       for c in ("zlib", "gzip", "bz2", "lzma", "xz")},
    "npy-object": ("arr.npy", Loader.NUMPY, _npy),
    "npz-object": ("arrs.npz", Loader.NUMPY, _npz),
    "nested-zip": ("bundle.zip", Loader.NESTED_TORCH, _nested_zip),
    "lying-extension": ("config.json", Loader.TORCH, _plain(2)),
    "polyglot-pickle-zip": ("model.pt", Loader.PICKLE, _polyglot),
    "pickle-nested-bytes": ("tensor.pkl", Loader.PICKLE, _nested_bytes),
    "zip-prepended-data": ("model.pt", Loader.ZIP_MEMBER, _prepended),
    "joblib-dtype-elsize": ("model.joblib", Loader.JOBLIB, _joblib_dtype_elsize),
    "joblib-array-opcodes": ("model.joblib", Loader.PICKLE, _joblib_array_opcodes),
}

#: Every kind of sample, in a stable order.
ALL_KINDS: tuple[str, ...] = tuple(_BUILDERS)

#: The loader each kind targets.
LOADERS: dict[str, Loader] = {k: v[1] for k, v in _BUILDERS.items()}


def build(kind: str, tmp_path: Path, marker: Path) -> Path:
    """Write the sample ``kind`` under ``tmp_path``; loading it creates ``marker``."""
    filename, _, writer = _BUILDERS[kind]
    folder = tmp_path / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    writer(path, marker)
    return path


def _load_zip_members(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith("/extra/constants"):
                pickle.loads(zf.read(name))  # noqa: S301 - the point of the test


def _load_nested(path: Path) -> None:
    import torch  # noqa: PLC0415

    with zipfile.ZipFile(path) as zf:
        torch.load(io.BytesIO(zf.read("model/weights.pt")), weights_only=False)


def _run(loader: Loader, path: Path) -> None:
    if loader is Loader.PICKLE:
        with open(path, "rb") as fh:
            pickle.load(fh)  # noqa: S301
    elif loader is Loader.TORCH:
        import torch  # noqa: PLC0415

        torch.load(path, weights_only=False)
    elif loader is Loader.JOBLIB:
        import joblib  # noqa: PLC0415

        joblib.load(path)
    elif loader is Loader.NUMPY:
        import numpy as np  # noqa: PLC0415

        loaded = np.load(path, allow_pickle=True)
        if hasattr(loaded, "files"):
            for name in loaded.files:
                loaded[name]
    elif loader is Loader.ZIP_MEMBER:
        _load_zip_members(path)
    else:
        _load_nested(path)


def fire(kind: str, path: Path, marker: Path | None = None) -> None:
    """Load ``path`` with the loader ``kind`` targets; errors raised after the payload ran are
    swallowed. With ``marker``, waits briefly for payloads that run in a child process."""
    registered = kind == "pickle-ext-opcode"
    if registered:  # the victim process has some library that registered this extension
        copyreg.add_extension("builtins", "exec", EXT_CODE)
    try:
        _run(LOADERS[kind], path)
    except Exception:  # noqa: BLE001 - loaders fail after the payload ran; the marker tells
        pass
    finally:
        if registered:
            copyreg.remove_extension("builtins", "exec", EXT_CODE)
    if marker is not None:
        for _ in range(50):
            if marker.exists():
                break
            time.sleep(0.02)
