"""``bastion train``, ``bastion distill`` and ``bastion harden`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from _helpers.models import accuracy, digits_mlp
from bastion.cli.main import main
from bastion.cli.train import parse_budget
from bastion.core.errors import ConfigurationError
from bastion.data import load_digits

MLP = "_helpers.models:digits_mlp"
pytestmark = pytest.mark.usefixtures("torch_one_thread")




def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_train_writes_a_working_model_metrics_and_report_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", MLP, "--data", "digits", "--method", "pgd", "--eps", "0.1",
            "--lr", "0.01", "--out", str(out)]
    code, stdout, err = _run(capsys, *args, "--epochs", "2")
    assert code == 0, err
    assert "trained pgd" in stdout and "bastion evaluate --model " + MLP in stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    result = json.loads((out / "train.json").read_text())
    assert result["config"]["method"] == "pgd" and result["config"]["threat"]["eps"] == 0.1
    html = (out / "report.html").read_text()
    assert "training curves" in html and "data:image/png;base64," in html
    model = digits_mlp()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    split = load_digits()
    assert accuracy(model.eval(), split.x_test, split.y_test) > 0.7  # it really trained
    code, _, err = _run(capsys, *args, "--epochs", "3", "--resume")
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in
            (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_train_says_when_the_guard_finds_a_run_that_learns_no_robustness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # eps 0.5 on [0, 1] pixels reaches the all-grey image from every input: no model can be
    # robust there, so FGSM-RS stays at chance and the guard must say so (and continue, as asked)
    code, stdout, err = _run(
        capsys, "train", "--model", MLP, "--data", "digits", "--method", "fgsm-rs", "--eps",
        "0.5", "--lr", "0.01", "--epochs", "6", "--overfit-fallback", "continue", "--out",
        str(tmp_path / "run"))
    assert code == 0, err
    assert "overfitting guard: no robustness learned by epoch" in stdout
    assert "eps_warmup" in stdout
    events = json.loads((tmp_path / "run" / "train.json").read_text())["guard_events"]
    assert len(events) == 1 and events[0].endswith(": continue")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "pgdd", "--eps", "0.1"], "unknown training method 'pgdd'"),
        (["--method", "pgd"], "eps > 0"),
        (["--method", "none", "--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--method", "none", "--model", "nopkg.nomod:f"], "cannot import nopkg.nomod"),
        (["--method", "none", "--data", "missing.npz"], "missing.npz"),
        (["--method", "none", "--seed", "99999999999999999999"], "--seed"),
        (["--method", "none", "--seed", "-1"], "--seed"),
    ],
)
def test_train_usage_errors_exit_2_with_a_message_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["train", "--model", MLP, "--data", "digits", "--epochs", "1",
            "--out", str(tmp_path / "o")]
    code, _, err = _run(capsys, *base, *args)
    assert code == 2 and message in " ".join(err.split())
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_harden_keeps_every_round_and_exits_1_when_the_target_is_missed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h"
    code, stdout, err = _run(
        capsys, "harden", "--model", MLP, "--data", "digits", "--target-robust-accuracy", "99",
        "--eps", "0.1", "--budget", "1", "--epochs", "2", "--attacks", "apgd-ce",
        "--eval-samples", "100", "--out", str(out),
    )
    assert code == 1, err
    assert "round 0:" in stdout and "round 1:" in stdout and "target 99.0% NOT met" in stdout
    result = json.loads((out / "harden.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [0, 1] and result["met"] is False
    assert (out / "model.safetensors").is_file() and (out / "round-01" / "model.safetensors")
    html = (out / "report.html").read_text()
    assert "target not met" in html and "accuracy per round" in html


def test_distill_writes_teacher_student_and_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    code, stdout, err = _run(capsys, "distill", "--teacher", MLP, "--student", MLP, "--data",
                             "digits", "--temperature", "20", "--epochs", "2", "--out", str(out))
    assert code == 0, err
    assert "negative example" in stdout
    assert (out / "student" / "model.safetensors").is_file()
    assert json.loads((out / "distillation.json").read_text())["temperature"] == 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", (4, None)), ("30m", (None, 1800.0)), ("600s", (None, 600.0)),
     ("1.5h", (None, 5400.0)), ("2,10m", (2, 600.0)), (" 3 , 1h ", (3, 3600.0))],
)
def test_budget_parses_rounds_and_durations(text: str, expected: tuple) -> None:  # type: ignore[type-arg]
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "3x", "1d", "2,3", "10m,20m", "0s"])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--budget"):
        parse_budget(text)
