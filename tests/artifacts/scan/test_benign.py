"""Ordinary model files scan safe (exit 0): no false alarm on what people actually save."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bastion.artifacts.scan import Verdict, scan_file

from ._cli import run_cli


def _checkpoint() -> dict[str, object]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 2))
    adam = torch.optim.Adam(model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for opt in (adam, sgd):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    sched = torch.optim.lr_scheduler.StepLR(sgd, 3)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
              torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant = torch.quantize_per_tensor(torch.rand(4), 0.1, 10, torch.quint8)
    return {"model": model.state_dict(), "adam": adam.state_dict(), "sgd": sgd.state_dict(),
            "sched": sched.state_dict(), "epoch": 3, "sparse": torch.eye(3).to_sparse(),
            "quant": quant, "param": torch.nn.Parameter(torch.ones(2)),
            "tensors": {str(d): torch.ones(3, dtype=d) for d in dtypes}}


def _arrays() -> dict[str, object]:
    return {"f": np.arange(5.0), "i": np.arange(3, dtype=np.int32), "s": np.float32(3),
            "dt": np.dtype("f4"), "u": np.array(["ab", "c"]), "c": np.ones(2, complex),
            "rec": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
            "t": np.array(["2020-01-01"], dtype="datetime64[D]")}


def _torch_zip(p: Path) -> None:
    torch.save(_checkpoint(), p)


def _torch_legacy(p: Path) -> None:
    torch.save(_checkpoint(), p, _use_new_zipfile_serialization=False)


def _npy(p: Path) -> None:
    with open(p, "wb") as fh:
        np.save(fh, np.arange(12.0).reshape(3, 4))


def _npz(p: Path) -> None:
    with open(p, "wb") as fh:
        np.savez_compressed(fh, a=np.arange(3), b=np.ones((2, 2)))


def _np_pickle(p: Path) -> None:
    p.write_bytes(pickle.dumps(_arrays(), protocol=5))


def _joblib(compress: object) -> Callable[[Path], None]:
    return lambda p: joblib.dump(_arrays(), p, compress=compress)


def _safetensors(p: Path) -> None:
    save_file({"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.float16)}, str(p))


_BENIGN: dict[str, Callable[[Path], None]] = {
    "torch-zip": _torch_zip, "torch-legacy": _torch_legacy, "npy": _npy, "npz": _npz,
    "numpy-pickle": _np_pickle, "joblib": _joblib(0), "joblib-zlib": _joblib(3),
    "joblib-gzip": _joblib(("gzip", 3)), "joblib-bz2": _joblib(("bz2", 3)),
    "joblib-lzma": _joblib(("lzma", 3)), "joblib-xz": _joblib(("xz", 3)),
    "safetensors": _safetensors,
}


@pytest.mark.parametrize("kind", sorted(_BENIGN))
def test_benign_file_is_safe(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    _BENIGN[kind](path)
    report = scan_file(path)
    assert report.verdict is Verdict.SAFE, report.problems
    assert run_cli("scan", str(path)) == 0


def _estimators() -> list[object]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeRegressor

    return [make_pipeline(StandardScaler(), LogisticRegression()),
            RandomForestClassifier(n_estimators=3, random_state=0),
            HistGradientBoostingClassifier(max_iter=3, random_state=0),
            KNeighborsClassifier(3), SVC(), DecisionTreeRegressor(random_state=0)]


def test_sklearn_estimators_are_safe(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 4))
    y = (x[:, 0] > 0.5).astype(int)
    paths = []
    for i, est in enumerate(_estimators()):
        est.fit(x, y)
        paths.append(tmp_path / f"est{i}.joblib")
        joblib.dump(est, paths[-1])
        paths.append(tmp_path / f"est{i}.pkl")
        paths[-1].write_bytes(pickle.dumps(est, protocol=4))
    for path in paths:
        report = scan_file(path)
        assert report.verdict is Verdict.SAFE, (path.name, report.problems)
    assert run_cli("scan", str(tmp_path)) == 0


def test_sklearn_function_attribute_needs_one_allow(tmp_path: Path) -> None:
    """A fitted SelectKBest stores the function f_classif: unknown until allowed (documented)."""
    from sklearn.feature_selection import SelectKBest

    rng = np.random.default_rng(0)
    x = rng.random((20, 4))
    est = SelectKBest(k=2).fit(x, (x[:, 0] > 0.5).astype(int))
    path = tmp_path / "select.joblib"
    joblib.dump(est, path)
    assert scan_file(path).verdict is Verdict.UNKNOWN
    spec = "sklearn.feature_selection._univariate_selection.f_classif"
    assert run_cli("scan", str(path)) == 1
    assert run_cli("scan", str(path), "--allow", spec) == 0
