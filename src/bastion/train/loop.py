"""``fit``: the training loop behind every method, with checkpoints, resume, the overfitting
guard and DDP.

One loop serves plain training, PGD-AT, FGSM-RS and TRADES (:mod:`bastion.train.methods`),
one process or many (:mod:`bastion.train.distributed`). Everything random comes from generators
seeded by ``config.seed`` (data order, random starts, noise) and from the global generator
re-seeded inside a :func:`torch.random.fork_rng` block (dropout), so the same seed gives the same
weights on CPU and the caller's global random state is left as it was. The generators' states are
part of every checkpoint, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError
from bastion.core.progress import task_progress
from bastion.train import checkpoint as ckpt
from bastion.train._data import DEFAULT_BOUNDS, TrainData, prepare
from bastion.train.config import GuardFallback, TrainConfig, TrainMethod
from bastion.train.distributed import DistContext, setup
from bastion.train.methods import batch_loss, random_start
from bastion.train.overfit import STALL_PREFIX, Monitor, collapsed, stall_message
from bastion.train.results import EpochMetrics, TrainResult

__all__ = ["fit"]

if TYPE_CHECKING:
    from bastion.guard.policy import InputGuard
    from bastion.guard.schema import TensorSchema

_logger = logging.getLogger("bastion.train")
_NOISE_STREAM = 0x6E6F6973


def fit(
    model: nn.Module,
    data: Any,
    *,
    config: TrainConfig | None = None,
    val_data: Any = None,
    out: str | Path | None = None,
    resume: bool = False,
    schema: TensorSchema | InputGuard | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` in place with plain, PGD-AT, FGSM-RS or TRADES training.

    Args:
        model: any module mapping inputs in the threat's bounds to logits.
        data: an ``(x, y)`` pair of tensors, a Dataset or a DataLoader; ``y`` holds class
            indices, or probability rows ``(N, C)`` (soft labels, method none only).
        config: the hyperparameters (default ``TrainConfig()``).
        val_data: like ``data``; when given, the per-epoch accuracies and the overfitting guard
            use ``guard_samples`` of it instead of the training data.
        out: a directory for checkpoints, ``metrics.jsonl``, ``model.safetensors`` and
            ``train.json`` (see :mod:`bastion.train.checkpoint`); None writes nothing.
        resume: continue the run checkpointed in ``out`` exactly where it stopped; the config
            must match except ``epochs`` (which may grow).
        schema: a ``bastion.guard`` ``TensorSchema`` or ``InputGuard`` every training batch is
            put through before training: per its policy, invalid samples are dropped
            (``reject``) or fixed (``repair``, ``substitute``), and counted in the result.
        progress: show a progress bar (only on a terminal, only on rank 0).
        device: where to train; default the model's device (``cuda:LOCAL_RANK`` under DDP).
        on_epoch_end: called with each epoch's metrics, after its checkpoint is written.
        **overrides: ``TrainConfig`` fields replacing those of ``config``.

    Returns:
        The history and outcome; ``result.model`` is ``model``, trained.

    Raises:
        ConfigurationError: an invalid or unknown config field, nothing to resume, or a resumed
            run whose config or data differ (the message names the fields).
        InputValidationError: empty data, wrong shapes, labels out of range for the model,
            inputs outside the bounds, soft labels that are not probabilities, or a schema
            that rejects everything -- always before any training or file writing.

    Example:
        >>> from bastion import ThreatModel
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.rand(64, 4)
        >>> y = (x[:, 0] > 0.5).long()
        >>> result = fit(model, (x, y), method="fgsm-rs", threat=ThreatModel(eps=0.05),
        ...              epochs=2, batch_size=16, lr=0.01, progress=False)
        >>> [m.epoch for m in result.history], result.history[-1].robust_accuracy is not None
        ([1, 2], True)
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigurationError(f"config: expected a TrainConfig, got {type(config).__name__}")
    config = _with_overrides(config or TrainConfig(), overrides)
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if resume and out is None:
        raise ConfigurationError("resume=True needs out=<the run directory to resume>")
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ConfigurationError("model: expected a module with trainable parameters, got none")
    ctx = setup(device, first.device)
    try:
        return _Run(model, data, config, ctx, val_data=val_data, schema=schema,
                    out=None if out is None else Path(out)).train(
            resume=resume, progress=progress, on_epoch_end=on_epoch_end)
    finally:
        ctx.close()


def _with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigurationError(
            f"unknown fit option(s) {', '.join(unknown)}: expected TrainConfig fields "
            f"({', '.join(sorted(names))})")
    return dataclasses.replace(config, **overrides) if overrides else config


def _fingerprint(data: TrainData) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (data.x, data.y):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _no_progress(amount: float = 1.0) -> None:
    del amount


class _Run:
    """One training run: the checked data, the optimizer, the generators and the history."""

    def __init__(self, model: nn.Module, data: Any, config: TrainConfig, ctx: DistContext, *,
                 val_data: Any, schema: Any, out: Path | None) -> None:
        self.config, self.ctx, self.out = config, ctx, out
        self.model = model.to(ctx.device)
        self.data = prepare(data, model, config, schema=schema, device=ctx.device)
        val = None if val_data is None else prepare(val_data, model, config, what="val_data",
                                                    device=ctx.device)
        source = val if val is not None else self.data
        self.monitor = Monitor.build(source.x, source.y, config.guard_samples, config.threat,
                                     config.seed)
        self.bounds = config.threat.bounds if config.threat is not None else DEFAULT_BOUNDS
        self.n = self.data.x.shape[0]
        self.steps_per_epoch = math.ceil(self.n / config.batch_size)
        if config.batch_size < ctx.world_size:
            raise ConfigurationError(
                f"batch_size: expected at least one sample per process ({ctx.world_size}), got "
                f"{config.batch_size}")
        self.optimizer = self._optimizer()
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + _NOISE_STREAM)
        self.history: list[EpochMetrics] = []
        self.events: list[str] = []
        self.method = config.method
        self.step = 0
        self.seconds = 0.0
        self.stopped: str | None = None
        self.best_epoch: int | None = None
        self.best_score = -math.inf
        self.best_robust: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = list(self.model.parameters())
        if c.optimizer.value == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                   weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    # -- the run ---------------------------------------------------------------------------------

    def train(self, *, resume: bool, progress: bool,
              on_epoch_end: Callable[[EpochMetrics], None] | None) -> TrainResult:
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(self.config.seed * 7919 + self.ctx.rank)
            if self.ctx.device.type == "cuda":
                torch.cuda.manual_seed(self.config.seed * 7919 + self.ctx.rank)
            if resume:
                assert self.out is not None
                self._restore(ckpt.read_state(self.out))
            elif self.out is not None and self.ctx.is_main:
                ckpt.start_fresh(self.out)
            trained = self.ctx.wrap(self.model)
            with self._progress(progress) as advance:
                for epoch in range(len(self.history), self.config.epochs):
                    if self.stopped is not None:
                        break
                    metrics = self._epoch(trained, epoch + 1, advance)
                    self._checkpoint(metrics)
                    if on_epoch_end is not None:
                        on_epoch_end(metrics)
        result = self._result()
        if self.out is not None and self.ctx.is_main:
            ckpt.save_tensors(self.out / ckpt.MODEL_FILE, self.model.state_dict())
            atomic_write_text(self.out / ckpt.RESULT_FILE, result.to_json())
        self.ctx.barrier()
        return result

    @contextlib.contextmanager
    def _progress(self, enabled: bool) -> Iterator[Callable[[float], None]]:
        if not (enabled and self.ctx.is_main):
            yield _no_progress
            return
        total = self.config.epochs * self.steps_per_epoch
        with task_progress(f"train {self.config.method.value}", total) as advance:
            advance(len(self.history) * self.steps_per_epoch)
            yield advance

    def _epoch(self, trained: nn.Module, epoch: int,
               advance: Callable[[float], None]) -> EpochMetrics:
        c, ctx = self.config, self.ctx
        began = time.perf_counter()
        perm = torch.randperm(self.n, generator=self.data_gen)
        trained.train()
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        lr = eps = 0.0
        for b in range(self.steps_per_epoch):
            index = perm[b * c.batch_size:(b + 1) * c.batch_size]
            lr, eps = c.lr_at(self.step, self.steps_per_epoch), self._eps()
            total += self._step(trained, index, lr, eps)
            self.step += 1
            advance(1.0)
        (loss_sum,) = ctx.sum([float(total)])
        clean, robust = self.monitor.measure(self.model, ctx)
        self.seconds += time.perf_counter() - began
        metrics = EpochMetrics(epoch=epoch, loss=loss_sum / self.n, clean_accuracy=clean,
                               robust_accuracy=robust, seconds=time.perf_counter() - began,
                               lr=lr, eps=eps, method=self.method.value)
        self.history.append(metrics)
        self._judge(metrics)
        return metrics

    def _eps(self) -> float:
        if self.method is TrainMethod.NONE:
            return 0.0
        return self.config.eps_at(self.step, self.steps_per_epoch)

    def _step(self, trained: nn.Module, index: torch.Tensor, lr: float,
              eps: float) -> torch.Tensor:
        c, ctx = self.config, self.ctx
        x, y = self.data.x[index], self.data.y[index]
        n = x.shape[0]
        if c.noise_sigma > 0:
            noise = torch.randn(x.shape, generator=self.noise_gen, dtype=x.dtype)
            x = (x + c.noise_sigma * noise).clamp(*self.bounds)
        k = 0
        start = None
        if self.method is not TrainMethod.NONE and c.threat is not None and eps > 0:
            k = int(math.floor(c.mix * n + 0.5))
            if k:
                start = random_start(self.method, c.threat, x[:k], eps, self.noise_gen)
        lo, hi = ctx.shard(n)
        local_k = min(max(k - lo, 0), hi - lo)
        local_start = None if start is None else start[lo:lo + local_k].to(ctx.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(trained, self.model, x[lo:hi].to(ctx.device), y[lo:hi].to(ctx.device),
                          adversarial=local_k, start=local_start, method=self.method, config=c,
                          eps=eps)
        (loss * (ctx.world_size / n)).backward()  # type: ignore[no-untyped-call]
        if c.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad)
        self.optimizer.step()
        return loss.detach().to(torch.float64)

    def _judge(self, metrics: EpochMetrics) -> None:
        """Track the best epoch; on a collapse restore it, on a collapse or a stall apply the
        fallback (see :mod:`bastion.train.overfit`)."""
        c, robust = self.config, metrics.robust_accuracy
        if (c.guard_enabled and robust is not None and self.best_robust is not None
                and collapsed(robust, self.best_robust)):
            message = (f"catastrophic overfitting at epoch {metrics.epoch} (PGD accuracy "
                       f"{self.best_robust:.1%} -> {robust:.1%})")
            _logger.warning("%s: restoring the weights of epoch %s, fallback %s", message,
                            self.best_epoch, c.guard_fallback.value)
            self.events.append(f"{message}: restored epoch {self.best_epoch}, "
                               f"{c.guard_fallback.value}")
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            self._fall_back(message)
            return
        if (c.guard_enabled and c.threat is not None and self.method is TrainMethod.FGSM_RS
                and not any(e.startswith(STALL_PREFIX) for e in self.events)):
            # judged from the history, so a resumed run judges exactly as an uninterrupted one
            stall = stall_message(self.history, c.threat.eps, self.monitor.y)
            if stall is not None:
                _logger.warning("%s: fallback %s", stall, c.guard_fallback.value)
                self.events.append(f"{stall}: {c.guard_fallback.value}")
                self._fall_back(stall)
                if c.guard_fallback is not GuardFallback.CONTINUE:
                    return
        score = robust if robust is not None else metrics.clean_accuracy
        if score > self.best_score:
            self.best_score, self.best_epoch = score, metrics.epoch
            self.best_robust = robust
            if c.guard_enabled:
                self.best_state = _state_copy(self.model)

    def _fall_back(self, message: str) -> None:
        fallback = self.config.guard_fallback
        if fallback is GuardFallback.STOP:
            self.stopped = message
        elif fallback is GuardFallback.PGD:
            self.method = TrainMethod.PGD

    # -- checkpoints -----------------------------------------------------------------------------

    def _checkpoint(self, metrics: EpochMetrics) -> None:
        if self.out is None or not self.ctx.is_main:
            return
        out = self.out
        tensors, optimizer = ckpt.optimizer_tensors(self.optimizer)
        files = {ckpt.CHECKPOINT_FILE: ckpt.tensor_bytes(self.model.state_dict()),
                 ckpt.OPTIMIZER_FILE: ckpt.tensor_bytes(tensors)}
        if self.best_state is not None:
            files[ckpt.BEST_FILE] = ckpt.tensor_bytes(self.best_state)
        rng = {"data": ckpt.encode_rng(self.data_gen.get_state()),
               "noise": ckpt.encode_rng(self.noise_gen.get_state()),
               "torch": ckpt.encode_rng(torch.get_rng_state())}
        if self.ctx.device.type == "cuda":
            rng["cuda"] = ckpt.encode_rng(torch.cuda.get_rng_state(self.ctx.device))
        ckpt.commit_epoch(out, files, {
            "epoch": metrics.epoch, "step": self.step, "config": self.config.to_dict(),
            "data": _fingerprint(self.data), "samples": self.n, "method": self.method.value,
            "optimizer": optimizer, "rng": rng, "seconds": self.seconds,
            "history": [m.to_dict() for m in self.history], "events": self.events,
            "stopped_reason": self.stopped, "best": {
                "epoch": self.best_epoch, "score": self.best_score if self.history else None,
                "robust": self.best_robust, "file": self.best_state is not None}})
        ckpt.append_metrics(out, metrics.to_dict())

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.out is not None
        saved = TrainConfig.from_dict(state["config"])
        differ = self.config.differences(saved, ignore=("epochs",))
        if differ:
            raise ConfigurationError(
                f"cannot resume {self.out}: config field(s) {', '.join(differ)} differ from the "
                "checkpointed run (only epochs may change)")
        if state["data"] != _fingerprint(self.data):
            raise ConfigurationError(
                f"cannot resume {self.out}: the training data differ from the checkpointed run")
        if state["epoch"] > self.config.epochs:
            raise ConfigurationError(
                f"epochs: expected at least the {state['epoch']} epochs already trained in "
                f"{self.out}, got {self.config.epochs}")
        ckpt.load_model_state(self.model, self.out / ckpt.CHECKPOINT_FILE)
        ckpt.load_optimizer(self.out / ckpt.OPTIMIZER_FILE, self.optimizer, state["optimizer"])
        rng = state["rng"]
        self.data_gen.set_state(ckpt.decode_rng(rng["data"]))
        self.noise_gen.set_state(ckpt.decode_rng(rng["noise"]))
        torch.set_rng_state(ckpt.decode_rng(rng["torch"]))
        if "cuda" in rng and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.decode_rng(rng["cuda"]), self.ctx.device)
        self.history = [EpochMetrics.from_dict(m) for m in state["history"]]
        self.events = list(state["events"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.method = TrainMethod.parse(state["method"])
        self.stopped = state["stopped_reason"]
        best = state["best"]
        self.best_epoch, self.best_robust = best["epoch"], best["robust"]
        self.best_score = -math.inf if best["score"] is None else float(best["score"])
        if best["file"]:
            self.best_state = ckpt.read_tensors(self.out / ckpt.BEST_FILE)
        self.best_state = None if self.best_state is None else {
            k: v.to(self.ctx.device) for k, v in self.best_state.items()}
        if self.ctx.is_main:
            ckpt.rewrite_metrics(self.out, [m.to_dict() for m in self.history])

    def _result(self) -> TrainResult:
        return TrainResult(
            config=self.config, history=tuple(self.history), best_epoch=self.best_epoch,
            stopped_reason=self.stopped, guard_events=tuple(self.events), seconds=self.seconds,
            samples=self.n, rejected_samples=self.data.rejected,
            repaired_samples=self.data.repaired, world_size=self.ctx.world_size,
            model=self.model)
