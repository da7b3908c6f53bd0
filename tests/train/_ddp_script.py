"""Run under ``torchrun --nproc_per_node 2 _ddp_script.py OUT NAME``: the fit that
tests/train/test_distributed.py also runs in one process, with the config ``CONFIGS[NAME]``.

One fit per launch: a default process group re-created inside the same torchrun job reuses the
launcher's store keys, which can deadlock the second rendezvous."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from bastion import ThreatModel
from bastion.train import fit

N_SAMPLES = 251  # the last batch (27 samples) splits unevenly: 14 + 13
CONFIGS: dict[str, dict[str, object]] = {
    "none": {"method": "none"},
    "pgd": {"method": "pgd", "threat": ThreatModel(eps=0.05), "pgd_steps": 3, "mix": 0.5},
}
COMMON: dict[str, object] = {"epochs": 2, "batch_size": 32, "lr": 0.02, "optimizer": "sgd",
                             "guard_samples": 100, "seed": 4}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    y = torch.randint(0, 3, (N_SAMPLES,), generator=g)
    x = (torch.eye(3, 8)[y] * 0.5 + 0.25 + 0.15 * torch.randn(N_SAMPLES, 8, generator=g))
    return x.clamp(0, 1), y


def model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def main(out: Path, name: str) -> None:
    torch.set_num_threads(1)
    config = {**COMMON, **CONFIGS[name]}
    fit(model(), data(), out=out, progress=False, **config)  # type: ignore[arg-type]
    import torch.distributed as dist

    assert not dist.is_initialized(), "fit must destroy the process group it created"


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
