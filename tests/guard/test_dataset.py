"""guard_dataset's inputs: columns of one length, or an error that says what is wrong."""

from __future__ import annotations

import pytest
import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard import InputGuard, TensorSchema, guard_dataset

GUARD = InputGuard(TensorSchema(shape=("batch", 2), min=0.0, max=1.0), policy="repair")


class _Items:
    """A map-style dataset of the given items."""

    def __init__(self, items: list[object]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> object:
        return self.items[index]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"x": torch.zeros(3, 2)}, r"expected a tensor, a sequence of tensors or a map-style "
                                   r"Dataset .*got dict"),
        ("abc", r"got str"),
        (5, r"got int"),
        ((torch.zeros(3, 2), torch.zeros(2)), r"different numbers of samples \[3, 2\]"),
        ((torch.zeros(3, 2), torch.tensor(1)), r"0-d tensor"),
        (_Items([torch.zeros(2), torch.zeros(3)]), r"field 0 of the items cannot be stacked"),
        (_Items([(torch.zeros(2), 1), (torch.zeros(2), "cat")]),
         r"field 1 of the items cannot be stacked"),
        (_Items([(torch.zeros(2), 1), (torch.zeros(2),)]), r"same number of fields"),
        (_Items([]), r"the dataset is empty"),
    ],
)
def test_bad_datasets_are_refused_with_the_reason(data: object, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        guard_dataset(data, GUARD)


def test_guard_must_be_an_input_guard() -> None:
    with pytest.raises(ConfigurationError, match="guard_dataset needs an InputGuard, got None"):
        guard_dataset(torch.zeros(3, 2), None)  # type: ignore[arg-type]


def test_a_dataset_of_tuples_is_stacked_by_field() -> None:
    items = _Items([(torch.tensor([0.5, 2.0]), 1), (torch.tensor([0.1, 0.2]), 0)])
    (x, y), result = guard_dataset(items, GUARD)
    assert x.tolist() == [[0.5, 1.0], [0.10000000149011612, 0.20000000298023224]]
    assert y.tolist() == [1, 0] and result.changed_samples == (0,)
