"""Where the refining stages of the default ensemble find their breaks: the evidence behind the
margin-ordered probe of ``bastion.evaluate.curves``.

Runs APGD-CE and APGD-T (top 3 targets) on the test samples, ranks the survivors by the smallest
margin ``z_y - max_{j != y} z_j`` the two left them at, then runs APGD-T on targets 4-9 and
Square (5,000 queries) on *every* survivor and prints the rank of each sample they break. Ranks
near 0 mean the breaks are where the white-box attacks came closest, so a probe in margin order
finds them with a few samples; ranks spread over the whole range would mean it cannot.

Usage: python benchmarks/probe_order.py --weights FILE [--samples 500] [--threads 1]
(FILE: DemoCNN weights, e.g. ``pgd.safetensors`` from ``benchmarks/adv_train.py --save-dir``)
"""

from __future__ import annotations

import argparse
import time

import torch
from safetensors.torch import load_file

from bastion import ThreatModel
from bastion.attacks import APGD, APGDT, Attack, Loss, Square
from bastion.data import load_mnist5k
from bastion.zoo import DemoCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = DemoCNN()
    model.load_state_dict(load_file(args.weights))
    model.eval()
    data = load_mnist5k()
    x, y = data.x_test[: args.samples], data.y_test[: args.samples]
    threat = ThreatModel(eps=args.eps)  # Linf, bounds (0, 1)

    def logits(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(b) for b in torch.split(inputs, 250)])

    def margins(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        true = z.gather(1, labels[:, None]).squeeze(1)
        return true - z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)

    alive = logits(x).argmax(1) == y
    closest = torch.full((x.shape[0],), float("inf"))

    def stage(attack: Attack, name: str) -> torch.Tensor:
        idx = alive.nonzero().squeeze(1)
        start = time.perf_counter()
        x_adv = attack(model, x[idx], y[idx])
        m = margins(logits(x_adv), y[idx])
        closest[idx] = torch.minimum(closest[idx], m)
        broken = m < 0
        alive[idx[broken]] = False
        print(f"{name:<10} attacked {idx.numel():4d}, broke {int(broken.sum()):3d} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        return idx[broken]

    stage(APGD(threat=threat, loss=Loss.CE, steps=100), "apgd-ce")
    stage(APGDT(threat, targets=3, steps=100), "apgd-t 1-3")
    survivors = alive.nonzero().squeeze(1)
    order = survivors[closest[survivors].argsort()].tolist()
    rank = {sample: r for r, sample in enumerate(order)}
    print(f"{survivors.numel()} survivors, ranked by the margin the white-box attacks left")
    snapshot = alive.clone()
    for attack, name in ((APGDT(threat, targets=6, skip_targets=3, steps=100), "apgd-t 4-9"),
                         (Square(threat=threat, queries=5000), "square")):
        alive[:] = snapshot
        broken = stage(attack, name)
        print(f"  ranks of the samples {name} broke: {sorted(rank[int(i)] for i in broken)}")


if __name__ == "__main__":
    main()
