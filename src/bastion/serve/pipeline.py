"""One request's path through the guard: input guard -> model -> output checks -> monitors -> audit.

The pipeline is split where the server needs it split. :meth:`Pipeline.infer` (guard, model,
output checks) is pure computation and may be abandoned on a timeout; :meth:`Pipeline.commit`
(monitors and the audit row) runs only for answers that will be sent and returns only once the
audit row is committed (written to the OS: it survives the process being killed; fsynced too
with ``synchronous="FULL"``) - so an acknowledged request is always on record. Concurrent
commits share the audit log's group commit (one commit for many rows). The monitors are fed
off the request path by one background thread
(:class:`~bastion.serve._monitor_worker.MonitorWorker`): an answer and its audit row carry the
monitors' verdict on the batches tested before it, and :meth:`Pipeline.monitor_state` first
waits for every queued batch.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from bastion.core.results import to_jsonable
from bastion.guard._json_text import JsonText
from bastion.guard._output_rows import answer
from bastion.guard.alerts import AlertManager
from bastion.guard.audit_log import AuditLog, AuditRecord, Outcome
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard, InvalidDataPolicy
from bastion.guard.schema import TensorSchema
from bastion.serve._monitor_worker import Listener, MonitorWorker, summarize
from bastion.serve.limits import Refusal

__all__ = ["Inference", "MonitorLike", "Pipeline"]


class MonitorLike(Protocol):
    """What the pipeline needs of a monitor suite (``bastion.guard.monitors.MonitorSuite``)."""

    def update(self, inputs: Tensor, outputs: Tensor) -> Sequence[Any]: ...

    def state(self) -> Any: ...


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Inference:
    """The result of :meth:`Pipeline.infer` for one batch, before it is committed."""

    inputs: Tensor
    logits: Tensor
    probabilities: list[list[float]]  # per sample, float32 values
    predictions: list[int]
    checks: dict[str, JsonText]
    prediction_text: JsonText  # the predictions as a JSON list, for the answer and the audit row


def _to_json(value: Any) -> Any:
    """Result objects as JSON values (``to_dict`` when they have one; NaN and inf as null)."""
    to_dict = getattr(value, "to_dict", None)
    return to_jsonable(to_dict() if callable(to_dict) else value)


class Pipeline:
    """The guarded model behind the server; ``guarded=False`` gives the bare model (benchmarks).

    Args:
        model: the classifier (``nn.Module`` mapping a batch to logits); put in eval mode.
        schema: the input schema (also used to decode requests).
        guard: the input guard; None only for the bare model.
        output_checker: checks on the logits; optional.
        monitors: fed ``(inputs, outputs)`` per batch; optional.
        audit: the audit log; optional (bare model).
        name: what ``/healthz`` reports.
        background_monitors: feed the monitors from a background thread (default) instead of
            on the request path; answers then carry the verdict of earlier batches.
        monitor_listeners: called with every monitor update's results, on the thread that
            updates the monitors.
        alerts: an alert manager fed every monitor update (its ``process`` joins the
            listeners); its active alerts appear in :meth:`monitor_state`.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        schema: TensorSchema,
        guard: InputGuard | None = None,
        output_checker: OutputChecker | None = None,
        monitors: MonitorLike | None = None,
        audit: AuditLog | None = None,
        name: str = "model",
        background_monitors: bool = True,
        monitor_listeners: Sequence[Listener] = (),
        alerts: AlertManager | None = None,
    ) -> None:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.schema, self.guard, self.name = schema, guard, name
        self._policy = "" if guard is None else InvalidDataPolicy.parse(guard.policy).value
        self.output_checker, self.monitors, self.audit = output_checker, monitors, audit
        self._lock = threading.Lock()
        self.alerts = alerts
        self._listeners = list(monitor_listeners)
        if alerts is not None:
            self._listeners.append(alerts.process)
        self._worker = (
            MonitorWorker(monitors, listeners=self._listeners)
            if monitors is not None and background_monitors
            else None
        )
        self._valid_input = JsonText.of(
            {"policy": self._policy, "valid": True, "summary": "valid", "violations": [],
             "actions": []}
        )
        self._clean_outputs: dict[tuple[str, ...], JsonText] = {}

    def _clean_output(self, counts: dict[str, int]) -> JsonText:
        """The output checks of a batch nothing was flagged in (one per set of flags)."""
        key = tuple(counts)
        text = self._clean_outputs.get(key)
        if text is None:
            text = JsonText.of({"ok": True, "problems": [], "counts": counts, "flagged": {}})
            self._clean_outputs[key] = text
        return text

    def infer(self, batch: Tensor) -> Inference:
        """Guard, run and check one batch (no side effects).

        Raises:
            Refusal: 422 when the input guard rejects the batch, naming every violation; 500
                when the model's outputs fail the output checks.
        """
        checks: dict[str, JsonText] = {}
        if self.guard is not None and self.guard.passes(batch):  # the common case
            checks["input"] = self._valid_input
        elif self.guard is not None:
            result = self.guard.guard(batch, raise_on_reject=False)
            report = result.report
            if result.rejected:
                raise Refusal(
                    422,
                    "invalid_input",
                    f"input rejected by schema {self.schema.name!r} "
                    f"(policy {self._policy}): {report.summary()}",
                    detail=[v.to_dict() for v in report.violations],
                )
            batch = result.x
            if report.ok and not result.actions:  # the common case: the same every time
                checks["input"] = self._valid_input
            else:
                checks["input"] = JsonText.of({
                    "policy": self._policy,
                    "valid": report.ok,
                    "summary": report.summary(),
                    "violations": [v.to_dict() for v in report.violations],
                    "actions": [a.to_dict() for a in result.actions],
                })
        with torch.no_grad():
            logits = self.model(batch)
        if self.output_checker is not None:
            out = self.output_checker.verdict(logits)
            counts = out.counts
            if out.ok and not out.flagged:  # nothing flagged: the same every time
                checks["output"] = self._clean_output(counts)
            else:
                checks["output"] = JsonText.of(out.to_dict())  # flagged samples by index
            if not out.ok:  # never send NaN or a malformed answer on; a model fault: 500
                raise Refusal(
                    500,
                    "output_check_failed",
                    "the model's outputs failed the output checks: "
                    + (", ".join(out.problems) or f"{counts}"),
                )
            # the checks passed: every row is finite, so its softmax and top-1 can be reused
            assert out.probabilities is not None and out.predictions is not None
            probabilities, predictions = out.probabilities, out.predictions
        else:
            if not (isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] >= 1
                    and logits.layout is torch.strided and not logits.is_meta
                    and not logits.is_complex() and logits.dtype != torch.bool):
                raise Refusal(500, "output_check_failed",
                              "the model's outputs are not a (B, C) tensor of logits")
            answered = answer(logits)
            if answered is None:
                raise Refusal(500, "output_check_failed", "the model produced non-finite outputs")
            probabilities, predictions = answered
        return Inference(
            inputs=batch,
            logits=logits,
            probabilities=probabilities,
            predictions=predictions,
            checks=checks,
            prediction_text=JsonText.of_ints(predictions),
        )

    def commit(
        self, *, request_id: str, body: bytes, inference: Inference, api_key: str | None = None,
        fresh_id: bool = False,
    ) -> dict[str, JsonText]:
        """Feed the monitors and write the audit row (committed on return); the checks to send,
        each with its JSON text (the pieces repeated from request to request are encoded once).

        ``api_key`` is the *name* of the caller's key, recorded in the audit row. ``fresh_id``:
        ``request_id`` was minted for this request from a random UUID (see
        :meth:`AuditLog.append_answered <bastion.guard.audit_log.AuditLog.append_answered>`).
        """
        checks = dict(inference.checks)
        recorded: JsonText | None = None  # the audit row's monitors field: [summary]
        if self._worker is not None:
            summary, recorded = self._worker.snapshot()
            checks["monitors"] = summary
            self._worker.submit(inference.inputs, inference.logits)
        elif self.monitors is not None:
            with self._lock:
                results = self.monitors.update(inference.inputs, inference.logits)
                for listener in self._listeners:
                    listener(results)
            summary = JsonText.of(summarize(results))
            checks["monitors"] = summary
            recorded = summary.listed()
        if self.audit is not None:
            self.audit.append_answered(
                inputs=body,
                request_id=request_id,
                api_key=api_key,
                validation=checks.get("input"),
                prediction=inference.prediction_text,
                checks=checks.get("output"),
                monitors=recorded,
                fresh_id=fresh_id,
            )
        return checks

    def record_refusal(
        self, *, request_id: str, body: bytes, refusal: Refusal, api_key: str | None = None
    ) -> None:
        """Write the audit row of a refused request: its reason, never its values."""
        if self.audit is None:
            return
        self.audit.append(
            AuditRecord.create(
                inputs=body,
                request_id=request_id,
                api_key=api_key,
                outcome=Outcome.REFUSED,
                reason=f"{refusal.status} {refusal.error}: {refusal.message}"[:2000],
                validation=refusal.detail,
            )
        )

    def monitor_state(self) -> dict[str, Any]:
        """The monitors' current state (``{}`` without monitors), with ``alerts`` when alerting:
        the rules, the active alerts and how many fired."""
        if self.monitors is None:
            return {}
        if self._worker is not None:
            self._worker.drain()
        with self._lock:
            state = _to_json(self.monitors.state())
        if not isinstance(state, dict):
            state = {"state": state}
        if self.alerts is not None:
            state["alerts"] = self.alerts.state()
        return state

    def close(self) -> None:
        """Once the server stops: flush alert sinks (webhooks) and close the audit log, which
        moves every answered request's row into its table (nothing left to replay)."""
        if self.alerts is not None:
            self.alerts.close()
        if self.audit is not None:
            self.audit.close()
