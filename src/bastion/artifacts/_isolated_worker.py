"""Child-process side of ``bastion convert --isolated``.

It unpickles an *unknown* (not dangerous) file with the ordinary loaders inside a process with
resource limits, a scrubbed environment and an empty working directory, and writes back only
tensors, as safetensors bytes on stdout. Nothing else crosses the process boundary.

The limits are not a sandbox: code in the file can still create, delete and rename files, read
what the user can read, open network connections and start programs (see
:mod:`bastion.artifacts.isolate`). Only its file *writes* are blocked (``RLIMIT_FSIZE`` = 0).
"""

from __future__ import annotations

import io
import json
import pickle
import sys


def _load(data: bytes, fmt: str) -> object:
    if fmt in {"torch-zip", "torch-legacy"}:
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if fmt == "joblib":
        import joblib

        return joblib.load(io.BytesIO(data))
    if fmt in {"npy", "npz"}:
        import numpy as np

        loaded = np.load(io.BytesIO(data), allow_pickle=True)
        return dict(loaded) if fmt == "npz" else loaded
    return pickle.loads(data)


def main() -> None:
    config = json.loads(sys.argv[1])
    with open(config["input"], "rb") as handle:
        data = handle.read()
    obj = _load(data, config["format"])
    from safetensors.torch import save

    from bastion.artifacts._flatten import flatten_tensors

    tensors, metadata, skipped = flatten_tensors(obj)
    metadata["bastion.skipped"] = json.dumps(skipped)
    sys.stdout.buffer.write(save(tensors, metadata=metadata))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
