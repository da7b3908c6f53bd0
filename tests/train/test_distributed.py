"""DDP through torchrun: two CPU processes (gloo) train like one process with the same config.

Exact equality is not expected: the all-reduce sums the two ranks' gradients, while one process
sums the same per-sample terms in one backward pass, in another floating-point order. The
differences stay at float32 rounding level (checked with atol 1e-5 after 2 epochs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from bastion.train import fit

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _ddp_script as script  # noqa: E402


def _torchrun(out: Path, name: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(HERE / "_ddp_script.py"), str(out), name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so that a timeout can kill the workers too
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun timed out:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
@pytest.mark.parametrize(
    "name", ["none", "pgd"]  # about 12 s per torchrun launch
)
def test_two_processes_train_like_one(tmp_path: Path, name: str) -> None:
    _torchrun(tmp_path, name)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = script.model()
        result = fit(single, script.data(), progress=False, **script.COMMON,
                     **script.CONFIGS[name])  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    ddp_weights = load_file(tmp_path / "model.safetensors")
    for key, value in single.state_dict().items():
        assert torch.allclose(ddp_weights[key], value, atol=1e-5, rtol=0), key
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["world_size"] == 2 and result.world_size == 1
    assert report["samples"] == script.N_SAMPLES
    ddp_final, single_final = report["history"][-1], result.history[-1]
    assert abs(ddp_final["clean_accuracy"] - single_final.clean_accuracy) <= 0.01
    assert ddp_final["loss"] == pytest.approx(single_final.loss, rel=1e-4)
    if single_final.robust_accuracy is not None:
        assert abs(ddp_final["robust_accuracy"] - single_final.robust_accuracy) <= 0.01
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
