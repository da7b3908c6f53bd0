"""The import policy: which globals a pickle may name.

A pickle runs code by naming a callable (``GLOBAL``/``STACK_GLOBAL``/``INST``) and calling it
(``REDUCE``/``BUILD``/``NEWOBJ``/``OBJ``). Denylists have been bypassed dozens of times by "one more
callable", so the policy is an **allowlist** of exact ``(module, name)`` pairs; the denylist
only decides how loudly an import outside the allowlist is reported:

* ``SAFE``      - on the allowlist (tensor and array rebuilding, containers, dtypes, ...);
* ``DANGEROUS`` - known to run code or touch the system (``os``, ``subprocess``, ``eval``, ...);
* ``UNKNOWN``   - anything else; never loaded unless the user allows it.

Dangerous imports can never be allowed, not even by a user policy: a user who writes
``--allow os.system`` gets a :class:`~bastion.ConfigurationError`, not a hole. The denylist
also wins over a wildcard allow: ``--allow 'numpy.*'`` never reaches ``numpy.save``,
``numpy.memmap``, ``torch.from_file`` or any other name that reads, writes or maps files.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import enum
import re
from collections.abc import Iterable
from pathlib import Path

from bastion.core.config_files import read_config_file
from bastion.core.errors import ConfigurationError

__all__ = ["DEFAULT_POLICY", "ImportClass", "Policy", "load_policy", "normalise"]


class ImportClass(enum.Enum):
    """How the policy judges one imported global."""

    SAFE = "safe"
    UNKNOWN = "unknown"
    DANGEROUS = "dangerous"


_TORCH_STORAGES = [
    f"{kind}Storage"
    for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4",
        "Float8_e4m3fn", "Float8_e5m2", "Float8_e4m3fnuz", "Float8_e5m2fnuz", "UInt16",
        "UInt32", "UInt64", "Untyped",
    )
]
_TORCH_DTYPES = [
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32",
    "complex64", "complex128", "cfloat", "cdouble", "chalf", "uint8", "uint16", "uint32",
    "uint64", "int8", "int16", "short", "int32", "int", "int64", "long", "bool", "quint8",
    "qint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16",
]
_TORCH_LAYOUTS = ["strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
                  "_mkldnn", "jagged"]
_TORCH_MEMORY_FORMATS = ["contiguous_format", "channels_last", "channels_last_3d",
                         "preserve_format"]

#: Exact (module, name) pairs that ordinary torch, numpy and scikit-learn checkpoints use and
#: whose construction cannot run arbitrary code when their arguments are themselves restricted.
_SAFE_PAIRS: frozenset[tuple[str, str]] = frozenset(
    [
        # Python containers and scalars
        *(("builtins", n) for n in (
            "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int",
            "float", "complex", "bool", "slice", "range", "object", "NoneType", "Ellipsis",
        )),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "Counter"),
        ("collections", "deque"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        # torch tensors, storages, dtypes and friends
        *(("torch._utils", n) for n in (
            "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
            "_rebuild_nested_tensor", "_rebuild_device_tensor_from_numpy",
            "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_meta_tensor_no_storage",
            "_rebuild_wrapper_subclass",
        )),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch._tensor", "_rebuild_from_type"),
        ("torch", "Tensor"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "dtype"),
        ("torch", "layout"),
        ("torch", "memory_format"),
        ("torch", "per_tensor_affine"),
        ("torch", "per_channel_affine"),
        ("torch", "per_tensor_symmetric"),
        ("torch", "per_channel_symmetric"),
        ("torch", "per_channel_affine_float_qparams"),
        ("torch.nn.parameter", "Parameter"),
        ("torch.nn.parameter", "Buffer"),
        ("torch.storage", "TypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("torch.serialization", "_get_layout"),
        ("torch.torch_version", "TorchVersion"),
        *(("torch", n) for n in _TORCH_STORAGES),
        *(("torch", n) for n in _TORCH_DTYPES),
        *(("torch", n) for n in _TORCH_LAYOUTS),
        *(("torch", n) for n in _TORCH_MEMORY_FORMATS),
        # numpy arrays, scalars and dtypes (numpy 1.x and 2.x module names)
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
          for n in ("_reconstruct", "scalar")),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # numpy scalar types named as values (e.g. an estimator's ``dtype=np.float64``)
        *(("numpy", n) for n in (
            "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64", "longdouble", "complex64", "complex128",
            "clongdouble", "str_", "bytes_", "datetime64", "timedelta64", "intp", "uintp",
        )),
        # scikit-learn's Cython trees rebuild themselves with ``newObj(cls) = cls.__new__(cls)``:
        # it only allocates an instance of a class the policy must already allow.
        ("sklearn.metrics._dist_metrics", "newObj"),
        ("sklearn.neighbors._kd_tree", "newObj"),
        ("sklearn.neighbors._ball_tree", "newObj"),
        # numpy random generators (fitted estimators keep their random state); the helper
        # functions only instantiate bit generator classes that must themselves be allowed.
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("numpy.random._generator", "Generator"),
        ("numpy.random.mtrand", "RandomState"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
        ("numpy.ma.core", "_mareconstruct"),
        ("numpy.ma.core", "MaskedArray"),
        # joblib's array wrappers (the array bytes follow the wrapper in the stream)
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        # (not joblib.numpy_pickle_compat.*: those wrappers np.load(allow_pickle=True) side files)
    ]
)

#: Whole modules whose every public name is a plain data type (numpy's dtype classes).
_SAFE_MODULES: frozenset[str] = frozenset({"numpy.dtypes"})

#: Modules whose import alone is reason to refuse (prefix match on the dotted path).
_DANGEROUS_MODULES: frozenset[str] = frozenset(
    {
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "runpy", "code",
        "codeop", "pty", "importlib", "ctypes", "_ctypes", "pickle", "_pickle", "cPickle",
        "pickletools", "dill", "cloudpickle", "joblib.numpy_pickle.load", "shutil", "socket",
        "ssl", "http", "urllib", "urllib2", "requests", "ftplib", "smtplib", "telnetlib",
        "webbrowser", "multiprocessing", "concurrent", "threading", "_thread", "signal",
        "asyncio", "pdb", "bdb", "timeit", "cProfile", "profile", "trace", "tempfile", "glob",
        "io", "_io", "zipimport", "marshal", "types", "inspect", "gc", "weakref", "functools",
        "operator", "itertools", "platform", "sysconfig", "site", "venv", "ensurepip", "pip",
        "setuptools", "distutils", "pkgutil", "imp", "zipfile", "tarfile", "sqlite3",
        "torch.hub", "torch.load", "torch.serialization.load", "torch.jit", "torch._dynamo",
        "torch._inductor", "torch.utils.cpp_extension", "torch.package", "torch.ops",
        "torch._ops", "torch.export", "torch.fx", "torch.distributed", "torch.multiprocessing",
        "numpy.load", "numpy.lib.npyio", "numpy.testing", "numpy.f2py", "numpy.distutils",
        "numpy.ctypeslib", "_posixsubprocess", "_winapi", "msvcrt", "winreg", "nturl2path",
        "builtins.eval", "builtins.exec", "builtins.compile", "builtins.open",
        "builtins.__import__", "builtins.getattr", "builtins.setattr", "builtins.delattr",
        "builtins.globals", "builtins.locals", "builtins.vars", "builtins.input",
        "builtins.breakpoint", "builtins.help", "builtins.exit", "builtins.quit",
        "builtins.memoryview", "builtins.type", "builtins.super", "builtins.classmethod",
        "builtins.staticmethod", "builtins.property", "builtins.print", "builtins.dir",
        "builtins.__build_class__", "builtins.__loader__", "builtins.__spec__",
        "copyreg._reconstructor.__globals__", "copyreg.add_extension", "copyreg.pickle",
        "_operator", "_functools", "_imp", "_signal", "_socket", "_sqlite3", "_osx_support",
        # run shell commands or Python code: pydoc's pagers (pipepager, tempfilepager, pager,
        # getpager) spawn a shell; the others interpret code, spawn processes or import on call
        "pydoc", "pipes", "idlelib", "lib2to3", "doctest", "unittest", "_pyrepl",
        "antigravity", "this", "compileall", "py_compile", "modulefinder", "pyclbr", "atexit",
        "logging.config", "logging.handlers", "logging.FileHandler", "logging.basicConfig",
        "uuid._get_command_stdout", "uuid._popen", "tkinter", "turtle", "turtledemo",
        "_posixshmem", "_multiprocessing", "_asyncio",
        # create, write, delete or map files
        "codecs.open", "codecs.EncodedFile", "gzip", "bz2", "lzma", "shelve", "dbm", "fileinput",
        "mmap", "filecmp", "linecache", "zipapp", "tabnanny", "mailbox", "_dbm", "_gdbm",
        # network
        "imaplib", "poplib", "nntplib", "xmlrpc", "socketserver", "wsgiref", "smtpd",
        "asyncore", "asynchat", "select", "selectors",
        # torch and numpy entry points that read, write or map files, load code or call native
        # operators (see also _FILE_ATTRS: wildcard allows never reach these)
        "torch.save", "torch.from_file", "torch.serialization.save", "torch._C", "torch.classes",
        "torch.library", "torch.compile", "torch._jit_internal", "torch.onnx",
        "torch.utils.tensorboard", "torch.utils.collect_env", "torch.utils.benchmark",
        "torch.utils.data", "torch.backends", "torch._higher_order_ops",
        "numpy.save", "numpy.savez", "numpy.savez_compressed", "numpy.savetxt",
        "numpy.loadtxt", "numpy.genfromtxt", "numpy.fromfile", "numpy.fromregex",
        "numpy.memmap", "numpy.DataSource", "numpy.lib.format", "numpy.lib._npyio_impl",
        "numpy.lib._datasource", "numpy.lib.utils", "numpy.core.memmap", "numpy._core.memmap",
        "numpy.core.records.fromfile", "numpy._core.records.fromfile", "numpy.rec.fromfile",
        "numpy._pytesttester",
    }
)

#: Attribute names that read, write or map files (``numpy.save``, ``ndarray.tofile``,
#: ``torch.UntypedStorage.from_file``, ``joblib.dump``...). Anywhere under these packages, and
#: anywhere in a dotted attribute walk, such a name is dangerous, so a wildcard allow such as
#: ``--allow 'numpy.*'`` never lets a "safe" load touch the file system.
_FILE_ATTRS: frozenset[str] = frozenset(
    {
        "save", "savez", "savez_compressed", "savetxt", "load", "loadtxt", "genfromtxt",
        "fromfile", "tofile", "fromregex", "memmap", "open_memmap", "from_file", "DataSource",
        "dump", "dumps", "loads", "hub", "ops", "read_pickle", "to_pickle",
    }
)
_FILE_ATTR_ROOTS: frozenset[str] = frozenset({"numpy", "torch", "joblib", "scipy", "pandas"})

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*\.(\*|[A-Za-z_][\w]*)$")


def normalise(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names the way the unpickler does (``fix_imports``), e.g. ``__builtin__``."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _is_dangerous(module: str, name: str) -> bool:
    dotted = f"{module}.{name}"
    parts = dotted.split(".")
    if any(p.startswith("__") and p.endswith("__") for p in name.split(".")):
        return True  # attribute traversal: __globals__, __builtins__, __class__, ...
    if any(".".join(parts[:i]) in _DANGEROUS_MODULES for i in range(1, len(parts) + 1)):
        return True
    # Dotted names walk attributes (protocol 4+): ``logging`` + ``os.system`` reaches os.system
    # through the module logging imported. Judge every module path the walk passes through.
    steps = name.split(".")
    if (parts[0] in _FILE_ATTR_ROOTS or len(steps) > 1) and any(
        p in _FILE_ATTRS for p in parts[1:]
    ):
        return True
    return any(
        ".".join(steps[i:j]) in _DANGEROUS_MODULES
        for i in range(len(steps) - 1)
        for j in range(i + 1, len(steps) + 1)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """An allowlist of globals a pickle may import, on top of the built-in one.

    Attributes:
        allow: extra exact ``(module, name)`` pairs; ``name == "*"`` allows a whole module.
        name: a label for reports.
    """

    allow: frozenset[tuple[str, str]] = frozenset()
    name: str = "default"

    def __post_init__(self) -> None:
        for module, name in self.allow:
            if _is_dangerous(module, "x" if name == "*" else name):
                raise ConfigurationError(
                    f"refusing to allow {module}.{name}: it names a module or callable that can "
                    "run code or touch the system; bastion never allows those"
                )

    def classify(self, module: str, name: str) -> ImportClass:
        """Judge one import, after the same Python 2 name mapping the unpickler applies."""
        module, name = normalise(module, name)
        if _is_dangerous(module, name):
            return ImportClass.DANGEROUS
        if (module, name) in _SAFE_PAIRS or (module, name) in self.allow:
            return ImportClass.SAFE
        if "." not in name and (module in _SAFE_MODULES or (module, "*") in self.allow):
            return ImportClass.SAFE
        if module in _SKLEARN_SAFE and name in _SKLEARN_SAFE[module]:
            return ImportClass.SAFE
        return ImportClass.UNKNOWN

    def extended(self, specs: Iterable[str]) -> Policy:
        """A copy that also allows ``specs`` (``"module.Name"`` or ``"module.*"``)."""
        return dataclasses.replace(self, allow=self.allow | {parse_spec(s) for s in specs},
                                   name=self.name if self.allow else "custom")


def parse_spec(spec: str) -> tuple[str, str]:
    """Parse ``"package.module.Name"`` or ``"package.module.*"`` into a ``(module, name)`` pair."""
    spec = spec.strip()
    if ":" in spec:  # also accept "package.module:Name"
        spec = spec.replace(":", ".", 1)
    if not _SPEC.match(spec):
        raise ConfigurationError(
            f"invalid allow entry {spec!r}: write MODULE.NAME (e.g. mypkg.models.Net) or MODULE.* "
            "(e.g. mypkg.models.*)"
        )
    module, _, name = spec.rpartition(".")
    return module, name


def load_policy(path: str | Path, base: Policy | None = None) -> Policy:
    """Read a TOML policy file: ``allow = ["mypkg.models.Net", "mypkg.layers.*"]``."""
    path = Path(path)
    data = read_config_file(path, "policy", json_allowed=False)
    unknown_keys = set(data) - {"allow", "name"}
    if unknown_keys:
        raise ConfigurationError(
            f"policy file {path} has unknown keys {sorted(unknown_keys)}; expected 'allow' "
            "(a list of MODULE.NAME strings) and optionally 'name'"
        )
    allow = data.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigurationError(f"policy file {path}: 'allow' must be a list of strings")
    policy = (base or DEFAULT_POLICY).extended(allow)
    name = data.get("name")
    return dataclasses.replace(policy, name=str(name)) if name else policy


def _load_sklearn_allowlist() -> dict[str, frozenset[str]]:
    """The scikit-learn estimator classes (and their helper types) that pickles of fitted models
    name. Generated from scikit-learn's own estimator list, stored as text: no import of sklearn."""
    table: dict[str, set[str]] = {}
    source = Path(__file__).with_name("sklearn_allowlist.txt")
    if not source.exists():
        return {}
    for line in source.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            module, _, name = line.rpartition(".")
            table.setdefault(module, set()).add(name)
    return {m: frozenset(n) for m, n in table.items()}


_SKLEARN_SAFE = _load_sklearn_allowlist()

DEFAULT_POLICY = Policy()
