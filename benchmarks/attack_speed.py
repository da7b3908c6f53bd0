"""Attack speed and strength, measured side by side in one run.

On the demo CNN and the 1,000 MNIST-5k test samples (Linf, eps 0.3 unless --eps):

(a) PGD-40 wall time over the floor of the computation: 40 forward+backward passes with respect
    to the input on the whole batch, timed the same way (target <= 1.1). PGD runs with early stop
    off here, so both do the same work; the early-stop time is printed too.
(b) The same attacks in torchattacks, ART and foolbox when they are importable (the ``bench``
    extra): robust accuracy and time ratio against bastion.
(c) bastion's default evaluation ensemble against torchattacks' AutoAttack (standard version) on
    the standard demo model and on a PGD adversarially trained one (trained here, seeded): robust
    accuracy (target: no higher than AutoAttack's + 0.5 points) and time (target: at most a third).

Usage: python benchmarks/attack_speed.py [--samples 1000] [--eps 0.3] [--skip-autoattack]
       [--device cpu|cuda] [--threads N] [--only-c] [--aa-samples N] [--robust-model FILE]
       [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bastion import ThreatModel
from bastion.attacks import FGSM, PGD
from bastion.data import load_mnist5k
from bastion.zoo import demo_model


def timed(
    fn: Callable[[], torch.Tensor], device: torch.device, repeat: int = 1
) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeat`` runs (synchronising CUDA) and the last result."""
    best, out = float("inf"), torch.empty(0)
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The irreducible work of a gradient attack: ``steps`` input gradients, nothing else."""
    for p in model.parameters():
        p.requires_grad_(False)
    x = x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach()
    return grad


def part_a(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, device: torch.device
) -> None:
    threat = ThreatModel(norm="linf", eps=eps)
    t_floor, _ = timed(lambda: floor(model, x, y, 40), device, repeat=3)
    full = PGD(threat=threat, steps=40, step_size=0.01, early_stop=False)
    t_pgd, x_adv = timed(lambda: full(model, x, y), device, repeat=3)
    early = PGD(threat=threat, steps=40, step_size=0.01)
    t_early, x_early = timed(lambda: early(model, x, y), device, repeat=3)
    print("(a) PGD-40 against the floor (40 input-gradient passes on the whole batch)")
    print(
        f"    floor {t_floor:.3f} s | bastion PGD-40 {t_pgd:.3f} s -> ratio {t_pgd / t_floor:.3f}"
        f" (target <= 1.1); robust accuracy {accuracy(model, x_adv, y):.3f}"
    )
    print(
        f"    with per-sample early stop: {t_early:.3f} s -> {t_early / t_floor:.3f} of the floor;"
        f" robust accuracy {accuracy(model, x_early, y):.3f}"
    )


def part_b(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, device: torch.device
) -> None:
    threat = ThreatModel(norm="linf", eps=eps)
    rows: list[tuple[str, str, float, float]] = []
    ours = {
        "FGSM": FGSM(threat),
        "PGD-40": PGD(threat=threat, steps=40, step_size=0.01, random_start=True),
    }
    base: dict[str, float] = {}
    for name, attack in ours.items():
        t, adv = timed(lambda a=attack: a(model, x, y), device)
        base[name] = t
        rows.append(("bastion", name, accuracy(model, adv, y), t))
    try:
        import torchattacks

        peers = {
            "FGSM": torchattacks.FGSM(model, eps=eps),
            "PGD-40": torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True),
        }
        for name, attack in peers.items():
            t, adv = timed(lambda a=attack: a(x, y), device)
            rows.append(("torchattacks", name, accuracy(model, adv, y), t))
    except ImportError:
        print("    torchattacks: not installed")
    try:
        import numpy as np
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        xn, yn = x.cpu().numpy(), y.cpu().numpy()
        peers_art = {
            "FGSM": FastGradientMethod(clf, eps=eps, batch_size=len(xn)),
            "PGD-40": ProjectedGradientDescent(
                clf, eps=eps, eps_step=0.01, max_iter=40, batch_size=len(xn), verbose=False
            ),
        }
        for name, attack in peers_art.items():
            t, adv = timed(lambda a=attack: torch.from_numpy(a.generate(xn)), device)
            acc = float((clf.predict(adv.numpy()).argmax(1) == yn).mean())
            rows.append(("ART", name, acc, t))
        del np
    except ImportError:
        print("    ART: not installed")
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        peers_fb = {
            "FGSM": fb.attacks.FGSM(),
            "PGD-40": fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=True),
        }
        for name, attack in peers_fb.items():
            t, adv = timed(lambda a=attack: a(fmodel, x, y, epsilons=eps)[1], device)
            rows.append(("foolbox", name, accuracy(model, adv, y), t))
    except ImportError:
        print("    foolbox: not installed")
    print("(b) the same attacks in peer libraries")
    print(f"    {'library':<13}{'attack':<8}{'robust acc':>11}{'seconds':>10}{'x bastion':>11}")
    for lib, name, acc, t in rows:
        print(f"    {lib:<13}{name:<8}{acc:>11.3f}{t:>10.3f}{t / base[name]:>11.2f}")


def adversarially_trained(
    x: torch.Tensor, y: torch.Tensor, eps: float, device: torch.device, epochs: int,
    path: Path | None,
) -> nn.Module:
    """PGD-10 adversarial training (Madry et al.) of the demo architecture with
    ``bastion.train.fit``, seeded; or the weights at ``path`` (e.g. from benchmarks/adv_train.py
    --save-dir, ``pgd.safetensors``)."""
    from bastion.train import TrainConfig, fit
    from bastion.zoo import DemoCNN

    torch.manual_seed(0)
    model = DemoCNN().to(device)
    if path is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))
        return model.eval()
    config = TrainConfig(method="pgd", threat=ThreatModel(norm="linf", eps=eps), epochs=epochs,
                         batch_size=100, lr=5e-3, schedule="cyclic", pgd_steps=10, seed=0)
    fit(model, (x, y), config=config, progress=False)
    return model.eval()


def part_c(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    device: torch.device,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    epochs: int,
    path: Path | None = None,
    repeats: int = 1,
) -> None:
    from bastion.evaluate import robustness

    try:
        import torchattacks
    except ImportError:
        print("(c) torchattacks not installed: AutoAttack comparison skipped")
        return
    t0 = time.perf_counter()
    robust_model = adversarially_trained(x_train, y_train, eps, device, epochs, path)
    print(
        f"(c) default ensemble vs torchattacks AutoAttack (standard); adversarially trained model"
        f" built in {time.perf_counter() - t0:.0f} s ({epochs} epochs PGD-10)"
    )
    threat = ThreatModel(norm="linf", eps=eps)
    for label, net in (("standard", model), ("PGD-trained", robust_model)):
        aa = torchattacks.AutoAttack(
            net, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0
        )
        # the two take turns, `repeats` times each, and each keeps its fastest run: the load of a
        # shared machine only ever adds time, and taking turns exposes both to the same load
        t_ours = t_aa = float("inf")
        for _ in range(repeats):
            t, result = timed(
                lambda n=net: robustness(
                    n,
                    (x, y),
                    threat,
                    progress=False,  # type: ignore[misc]
                    sanity=False,
                ),
                device,
            )
            t_ours = min(t_ours, t)
            t, adv = timed(lambda a=aa: a(x, y), device)
            t_aa = min(t_aa, t)
        acc_aa = accuracy(net, adv, y)
        ours = result.robust_accuracy  # type: ignore[attr-defined]
        print(
            f"    {label:<12} clean {accuracy(net, x, y):.3f} | bastion {ours:.3f}"
            f" in {t_ours:.1f} s"
            f" | AutoAttack {acc_aa:.3f} in {t_aa:.1f} s | diff {100 * (ours - acc_aa):+.1f} pts"
            f" (target <= +0.5), time ratio {t_ours / t_aa:.2f} (target <= 0.33)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-autoattack", action="store_true")
    parser.add_argument("--at-epochs", type=int, default=12)
    parser.add_argument("--robust-model", type=Path, default=None,
                        help="DemoCNN weights (safetensors) of an adversarially trained model; "
                        "default: train one here with bastion.train (PGD-10)")
    parser.add_argument("--only-c", action="store_true", help="run part (c) only")
    parser.add_argument("--aa-samples", type=int, default=0,
                        help="samples for part (c) (0: the same as --samples)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="part (c): bastion and AutoAttack take turns this many times each, "
                        "and each keeps its fastest run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_mnist5k()
    x, y = data.x_test[: args.samples].to(device), data.y_test[: args.samples].to(device)
    model = demo_model().to(device).eval()
    print(
        f"# attack_speed on {device} ({platform.machine()}, {torch.get_num_threads()} threads),"
        f" torch {torch.__version__}, {x.shape[0]} samples, Linf eps {args.eps}"
    )
    print(f"clean accuracy {accuracy(model, x, y):.3f}")
    if not args.only_c:
        part_a(model, x, y, args.eps, device)
        part_b(model, x, y, args.eps, device)
    if not args.skip_autoattack:
        n_c = args.aa_samples or args.samples
        part_c(
            model,
            x[:n_c],
            y[:n_c],
            args.eps,
            device,
            data.x_train.to(device),
            data.y_train.to(device),
            args.at_epochs,
            args.robust_model,
            repeats=args.repeats,
        )


if __name__ == "__main__":
    main()
