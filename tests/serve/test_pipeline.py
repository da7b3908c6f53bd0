"""The pipeline's request path without a server: answers, the input shortcut, model faults."""

from __future__ import annotations

import math

import pytest
import torch

from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve.limits import Refusal
from bastion.serve.pipeline import Pipeline

SCHEMA = TensorSchema(shape=("batch", 4), min=0.0, max=1.0)


class _Returns(torch.nn.Module):
    """A model that returns a fixed object whatever its input."""

    def __init__(self, out: object) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> object:
        return self.out


def test_bare_and_guarded_pipelines_answer_the_softmax_and_top_class() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.rand(5, 4)
    with torch.no_grad():
        expected = torch.softmax(model(x).double(), dim=1)
    for pipeline in (
        Pipeline(model=model, schema=SCHEMA),
        Pipeline(model=model, schema=SCHEMA, guard=InputGuard(SCHEMA),
                 output_checker=OutputChecker(3, min_confidence=0.0, min_margin=0.0)),
    ):
        for batch in (x[:1], x):  # one sample (plain Python) and several
            inference = pipeline.infer(batch)
            assert inference.predictions == expected[: len(batch)].argmax(1).tolist()
            torch.testing.assert_close(torch.tensor(inference.probabilities, dtype=torch.float64),
                                       expected[: len(batch)], rtol=0, atol=3e-7)
            assert inference.prediction_text.text == str(inference.predictions)


@pytest.mark.parametrize("policy", ["reject", "repair"])
def test_the_input_shortcut_records_what_the_guard_would(policy: str) -> None:
    """A valid batch takes the shortcut and is recorded valid; a batch with a value out of
    range still goes through the guard: rejected (422) or repaired, with the action recorded."""
    pipeline = Pipeline(model=torch.nn.Linear(4, 3), schema=SCHEMA,
                        guard=InputGuard(SCHEMA, policy=policy))
    valid = pipeline.infer(torch.full((2, 4), 0.5)).checks["input"].value
    assert valid == {"policy": policy, "valid": True, "summary": "valid", "violations": [],
                     "actions": []}
    bad = torch.tensor([[0.5, 0.5, 7.0, 0.5]])
    if policy == "reject":
        with pytest.raises(Refusal) as refused:
            pipeline.infer(bad)
        assert refused.value.status == 422
    else:
        repaired = pipeline.infer(bad)
        assert repaired.checks["input"].value["valid"] is False
        assert [a["action"] for a in repaired.checks["input"].value["actions"]] == ["clip"]
        assert float(repaired.inputs.max()) == 1.0


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (torch.zeros(3), "not a \\(B, C\\) tensor"),
        (torch.zeros(1, 0), "not a \\(B, C\\) tensor"),
        (torch.zeros(1, 3, dtype=torch.complex64), "not a \\(B, C\\) tensor"),
        (torch.zeros(1, 3, dtype=torch.bool), "not a \\(B, C\\) tensor"),
        (torch.empty(1, 3, device="meta"), "not a \\(B, C\\) tensor"),
        ((torch.zeros(1, 3),), "not a \\(B, C\\) tensor"),
        (torch.tensor([[0.0, math.nan, 1.0]]), "non-finite"),
        (torch.tensor([[0.0, math.inf, 1.0]]), "non-finite"),
    ],
)
def test_a_bare_pipeline_refuses_outputs_it_cannot_answer(out: object, message: str) -> None:
    """Without output checks, a model fault is still a clean 500, never an exception from
    deep inside the answer or NaN sent on."""
    pipeline = Pipeline(model=_Returns(out), schema=SCHEMA)
    with pytest.raises(Refusal, match=message) as refused:
        pipeline.infer(torch.full((1, 4), 0.5))
    assert refused.value.status == 500 and refused.value.error == "output_check_failed"
