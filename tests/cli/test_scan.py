"""``bastion scan``: exit codes, policy options, and the JSON / SARIF / text outputs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from bastion.cli.main import main

_USER_CLASS = b"\x80\x02cmypkg.models\nNet\n)\x81}X\x01\x00\x00\x00wK\x01sb."


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    (tmp_path / "user.pkl").write_bytes(_USER_CLASS)
    return {p.stem: p for p in tmp_path.iterdir()}


def test_exit_codes(files: dict[str, Path]) -> None:
    assert _run("scan", str(files["ok"])) == 0
    assert _run("scan", str(files["ok"]), str(files["bad"])) == 1
    assert _run("scan", str(files["user"])) == 1
    assert _run("scan", str(files["ok"].parent / "missing.pt")) == 2


def test_allow_turns_user_class_safe(files: dict[str, Path], tmp_path: Path) -> None:
    assert _run("scan", str(files["user"]), "--allow", "mypkg.models.Net") == 0
    assert _run("scan", str(files["user"]), "--allow", "mypkg.models.*") == 0
    assert _run("scan", str(files["user"]), "--allow", "mypkg.models.Other") == 1
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["mypkg.models.Net"]\n')
    assert _run("scan", str(files["user"]), "--policy", str(policy)) == 0


@pytest.mark.parametrize("spec", ["os.system", "builtins.exec", "subprocess.*", "not a spec"])
def test_dangerous_or_bad_allow_is_a_usage_error(files: dict[str, Path], spec: str) -> None:
    assert _run("scan", str(files["ok"]), "--allow", spec) == 2


def test_bad_policy_file_is_a_usage_error(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("allow = [\n")
    assert _run("scan", str(files["ok"]), "--policy", str(bad)) == 2
    danger = tmp_path / "danger.toml"
    danger.write_text('allow = ["os.system"]\n')
    assert _run("scan", str(files["ok"]), "--policy", str(danger)) == 2
    assert _run("scan", str(files["ok"]), "--policy", str(tmp_path / "none.toml")) == 2
    assert _run("scan", str(files["ok"]), "--format", "xml") == 2


def test_json_output_shape(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert (
        _run("scan", str(files["bad"]), str(files["ok"]), "--format", "json", "-o", str(out)) == 1
    )
    data = json.loads(out.read_text())
    assert {"files", "summary"} <= set(data)
    assert data["summary"]["unsafe"] == 1 and data["summary"]["safe"] == 1
    by_path = {Path(f["path"]).name: f for f in data["files"]}
    bad = by_path["bad.pkl"]
    assert {"path", "format", "verdict", "findings"} <= set(bad)
    assert bad["verdict"] == "unsafe" and bad["format"] == "pickle"
    finding = bad["findings"][0]
    assert set(finding) == {"severity", "kind", "module", "name", "detail", "location"}
    assert (finding["severity"], finding["kind"], finding["module"], finding["name"]) == (
        "critical",
        "dangerous-import",
        "posix",
        "system",
    )


def test_sarif_output_is_structurally_valid(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.sarif"
    assert (
        _run(
            "scan", str(files["bad"]), str(files["user"]), "--format", "sarif", "--output", str(out)
        )
        == 1
    )
    log = json.loads(out.read_text())
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "bastion" and driver["version"]
    rule_ids = {r["id"] for r in driver["rules"]}
    assert {"dangerous-import", "unknown-import"} <= rule_ids
    levels = set()
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert result["level"] in {"error", "warning", "note"}
        assert result["message"]["text"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.endswith((".pkl",))
        levels.add(result["level"])
    assert levels == {"error", "warning"}


def test_text_output_names_the_problem(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("scan", str(files["bad"]), "--format", "text") == 1
    out = capsys.readouterr().out
    assert "unsafe" in out and "posix.system" in out


def test_directory_scan_reports_symlink_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.pkl").write_bytes(pickle.dumps([1, 2]))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pkl"
    outside.write_bytes(b"\x80\x02cposix\nsystem\n.")
    (tmp_path / "link.pkl").symlink_to(outside)
    out = tmp_path.parent / f"{tmp_path.name}.json"
    assert _run("scan", str(tmp_path), "--format", "json", "-o", str(out)) == 1
    data = json.loads(out.read_text())
    kinds = {Path(f["path"]).name: [x["kind"] for x in f["findings"]] for f in data["files"]}
    assert kinds["link.pkl"] == ["symlink"]  # reported, not followed
    assert kinds["a.pkl"] == []


def test_special_and_unreadable_files_are_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from bastion.artifacts.scan import Verdict, api, scan_paths

    os.mkfifo(tmp_path / "fifo")  # opening it would block forever
    (tmp_path / "locked.pt").write_bytes(b"x")
    real = api.scan_file

    def deny(path: Path, **kwargs: object) -> object:
        if Path(path).name == "locked.pt":
            raise PermissionError(13, "Permission denied")
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "scan_file", deny)
    report = scan_paths([tmp_path], progress=False)
    kinds = {Path(f.path).name: [x.kind for x in f.findings] for f in report.files}
    assert kinds == {"fifo": ["special-file"], "locked.pt": ["unreadable"]}
    assert report.verdict is Verdict.UNKNOWN


def test_digest_only_on_request(files: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    out = tmp_path / "r.json"
    assert _run("scan", str(files["ok"]), "--format", "json", "-o", str(out)) == 0
    assert json.loads(out.read_text())["files"][0]["sha256"] == ""  # the scan read pickles only
    assert _run("scan", str(files["ok"]), "--format", "json", "-o", str(out), "--sha256") == 0
    expected = hashlib.sha256(files["ok"].read_bytes()).hexdigest()
    assert json.loads(out.read_text())["files"][0]["sha256"] == expected


def test_markup_in_file_names_is_printed_verbatim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "[bold]model[red].pt"
    torch.save({"w": torch.ones(1)}, odd)
    assert _run("scan", str(odd)) == 0
    out = capsys.readouterr().out
    assert "[bold]" in out and "[red]" in out, "file names must not be read as rich markup"


def test_report_never_overwrites_a_scanned_file(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files["ok"].read_bytes()
    for args in (["scan", str(files["ok"]), "-o", str(files["ok"])],
                 ["scan", str(tmp_path), "-o", str(files["user"])]):
        assert _run(*args) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "would overwrite a file inside" in err or "is the scanned path itself" in err
    assert files["ok"].read_bytes() == before and files["user"].read_bytes() == _USER_CLASS
    report = tmp_path / "report.json"
    for _ in range(2):  # a new report inside the folder, then the earlier report, may be written
        assert _run("scan", str(tmp_path), "--format", "json", "-o", str(report)) == 1
    assert json.loads(report.read_text())["files"]


def test_control_characters_in_file_names_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "a\x1b]0;PWNED\x07b.pt"
    torch.save({"w": torch.ones(1)}, odd)
    assert _run("scan", str(odd)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "a\\x1b]0;PWNED\\x07b.pt" in out
    report = tmp_path / "r.txt"
    assert _run("scan", str(odd), "-o", str(report)) == 0
    text = report.read_text()
    assert "\x1b" not in text and "a\\x1b]0;PWNED\\x07b.pt" in text
