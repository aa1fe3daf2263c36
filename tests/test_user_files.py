"""Nothing a user has is lost or overwritten (issue 21): the comparison report writes only its own marked files,
never into a run folder; the study checks its --out before training; the convolution demo writes only into a
folder of its own; every figure is written atomically. Each check hashes every file before and after."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
from PIL import Image
from test_report import CLASSES, _fake_run

from cnn_jax import plots
from cnn_jax.files import MARKER
from cnn_jax.report import MARKDOWN_MARK, REPORT_KIND, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
PNG = b"\x89PNG\r\n\x1a\n"


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _script(name: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *map(str, args)], env=ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(err: str, *parts: str) -> None:
    line = err.strip()
    assert line.count("\n") == 0 and line.startswith("error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in line, (part, line)


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    a = _fake_run(tmp_path, "run_a", 0.9, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    b = _fake_run(tmp_path, "run_b", 0.8, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    return a, b


def _fail_savefig(monkeypatch) -> None:
    """Every figure save writes a few bytes to the file it is given, then fails (a full disk)."""
    def savefig(self, fname, *args, **kwargs):
        Path(fname).write_bytes(PNG + b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


# --- experiments/compare.py ---------------------------------------------------------------------------------


def test_compare_into_a_run_folder_is_refused_and_nothing_changes(two_runs, tmp_path, monkeypatch, capsys):
    """The issue's command replaced RUN_A/results.json with the report's data; a report never goes into a run
    folder (one holding a run's files, or marked as a run), nor anywhere inside one. The script as a process once,
    then its ``main`` in this process."""
    a, b = two_runs
    marked = tmp_path / "marked_run"  # a run folder known by its marker alone
    marked.mkdir()
    (marked / MARKER).write_text(json.dumps({"cnn_jax": "run"}))
    before = _hashes(tmp_path)
    result = _script("compare.py", a, b, "--out", a / "results.md")
    assert result.returncode == 2, (result.stdout, result.stderr)
    _one_line_error(result.stderr, "run folder", "a report is not part of a run", "nothing was written")
    for out in (a / "report.md", a / "figures" / "report.md", marked / "report.md", marked / "figures" / "report.md"):
        assert main([str(a), str(b), "--out", str(out)]) == 2, out
        _one_line_error(capsys.readouterr().err, "run folder", "a report is not part of a run", "nothing was written")
        assert _hashes(tmp_path) == before, out
        assert not (a / "figures").exists() and not (marked / "figures").exists()
    monkeypatch.chdir(a)  # the default --out report.md, run from inside the run folder
    assert main([str(a), str(b)]) == 2
    _one_line_error(capsys.readouterr().err, f"{a} is a run folder (it holds results.json and metrics.jsonl)")
    assert _hashes(tmp_path) == before


def test_compare_out_must_be_a_markdown_name(two_runs, tmp_path, capsys):
    """``--out x.json`` wrote the Markdown and then its data to the same file: the report was lost."""
    a, b = two_runs
    before = _hashes(tmp_path)
    for out in ("x.json", "x.png", "x.txt", "x.md.bak"):
        assert main([str(a), str(b), "--out", str(tmp_path / out)]) == 2, out
        _one_line_error(capsys.readouterr().err, "must end in .md", f"--out {tmp_path / Path(out).stem}.md")
        assert _hashes(tmp_path) == before
    assert main([str(a), str(b), "--out", str(tmp_path / "out" / "comparison")]) == 0  # no suffix: .md is added
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["comparison.json", "comparison.md",
                                                                    "comparison.png"]
    assert f"wrote {tmp_path / 'out' / 'comparison.md'}, " in capsys.readouterr().out


@pytest.mark.parametrize("name, content", [
    ("report.md", b"# my notes\n"),
    ("report.json", json.dumps({"runs": {}, "mine": True}).encode()),  # JSON, but not marked as a report of ours
    ("report.png", None),  # a picture, not ours
    ("report.md", (MARKDOWN_MARK + "x\n").encode()),  # close to the mark is not the mark
])
def test_compare_never_replaces_a_users_file(two_runs, tmp_path, capsys, name, content):
    a, b = two_runs
    folder = tmp_path / "reports"
    folder.mkdir()
    if content is None:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name)
    else:
        (folder / name).write_bytes(content)
    before = _hashes(tmp_path)
    assert main([str(a), str(b), "--out", str(folder / "report.md")]) == 2
    _one_line_error(capsys.readouterr().err, f"{folder / name} exists and is not a report written by cnn_jax compare",
                    "nothing was written")
    assert _hashes(tmp_path) == before


def test_compare_reruns_over_its_own_report_and_leaves_the_rest(two_runs, tmp_path):
    a, b = two_runs
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    runs_before = _hashes(a) | {f"b/{k}": v for k, v in _hashes(b).items()}
    first = _script("compare.py", a, b, "--out", folder / "report.md")
    assert first.returncode == 0, first.stderr
    data = json.loads((folder / "report.json").read_text())
    assert data["kind"] == REPORT_KIND and data["runs"]["run_b"]["test_accuracy"] == 0.8
    assert (folder / "report.md").read_text().splitlines()[0] == MARKDOWN_MARK
    with Image.open(folder / "report.png") as im:
        assert im.format == "PNG" and im.info.get("cnn_jax") == REPORT_KIND
    results = json.loads((b / "results.json").read_text())
    (b / "results.json").write_text(json.dumps({**results, "test_accuracy": 0.7}))
    assert main([str(a), str(b), "--out", str(folder / "report.md")]) == 0  # the same command: replaces its report
    assert json.loads((folder / "report.json").read_text())["runs"]["run_b"]["test_accuracy"] == 0.7
    assert "10.0 points ahead" not in (folder / "report.md").read_text()  # the new numbers: 20 points
    assert "20.0 points ahead" in (folder / "report.md").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.json", "report.md", "report.png"]
    assert (folder / "notes.txt").read_text() == "mine"
    (b / "results.json").write_text(json.dumps(results))
    assert _hashes(a) | {f"b/{k}": v for k, v in _hashes(b).items()} == runs_before  # runs are only read


def test_compare_writes_its_figure_atomically(two_runs, tmp_path, monkeypatch, capsys):
    """A save that fails half-way (full disk) leaves the previous report as it was, and no temporary file."""
    a, b = two_runs
    folder = tmp_path / "reports"
    assert main([str(a), str(b), "--out", str(folder / "report.md")]) == 0
    before = _hashes(tmp_path)
    _fail_savefig(monkeypatch)
    assert main([str(a), str(b), "--out", str(folder / "report.md")]) == 2
    _one_line_error(capsys.readouterr().err, "cannot write", "No space left on device")
    assert _hashes(tmp_path) == before


# --- experiments/study.py -----------------------------------------------------------------------------------


def test_study_checks_its_out_before_training(two_runs, tmp_path):
    a, _ = two_runs
    workdir = tmp_path / "runs"
    before = _hashes(tmp_path)
    result = _script("study.py", "--workdir", workdir, "--out", a / "report.md")
    assert result.returncode == 1 and "==" not in result.stdout, result.stdout  # no training started
    _one_line_error(result.stderr, "run folder", "a report is not part of a run")
    study = runpy.run_path(str(ROOT / "experiments" / "study.py"), run_name="study")["main"]
    for out, message in ((workdir / "fashion_mnist" / "lab" / "report.md", "inside the run folder"),
                         (tmp_path / "study.json", "must end in .md")):
        with pytest.raises(SystemExit) as exited:
            study(["--workdir", str(workdir), "--out", str(out)])
        _one_line_error(str(exited.value.code), message)
    assert _hashes(tmp_path) == before and not workdir.exists()


# --- experiments/convolution_demo.py ------------------------------------------------------------------------


def test_convolution_demo_never_writes_into_a_users_folder(tmp_path, capsys):
    """It wrote kernels.png and walkthrough_<i>.png into --out whatever was there."""
    users = tmp_path / "pictures"
    users.mkdir()
    (users / "kernels.png").write_bytes(PNG + b"my own kernels")
    (users / "walkthrough_0.png").write_bytes(PNG + b"my own walkthrough")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    a_run = tmp_path / "a_run"
    a_run.mkdir()
    (a_run / MARKER).write_text(json.dumps({"cnn_jax": "run"}))
    before = _hashes(tmp_path)
    demo = runpy.run_path(str(ROOT / "experiments" / "convolution_demo.py"), run_name="demo")["main"]
    for i, (out, says) in enumerate(((users, "holds files that cnn_jax did not write"),
                                     (other, "holds files that cnn_jax did not write (e.g. notes.txt)"),
                                     (a_run, "holds cnn_jax run outputs"))):
        args = ["--out", str(out), "--num-images", "1", "--filters", "sobel_x"]
        if i == 0:  # the script as a process once, then its main in this process
            result = _script("convolution_demo.py", *args)
            code, err = result.returncode, result.stderr
        else:
            with pytest.raises(SystemExit) as exited:
                demo(args)
            code, err = exited.value.code, capsys.readouterr().err
        assert code == 2, err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and f"error: --out {out} {says}" in last, err
        assert _hashes(tmp_path) == before


def test_convolution_demo_writes_its_own_folder_again(tmp_path, monkeypatch):
    demo = runpy.run_path(str(ROOT / "experiments" / "convolution_demo.py"), run_name="demo")["main"]
    out = tmp_path / "demo"
    args = ["--out", str(out), "--num-images", "1", "--filters", "sobel_x", "sharpen"]
    first = demo(args)
    assert json.loads((out / MARKER).read_text()) == {"cnn_jax": "convolution_demo"}
    assert demo(args) == first  # its own folder: written again
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "kernels.png", "walkthrough_0.png"])
    for p in first:
        assert p.read_bytes()[:8] == PNG
    before = _hashes(tmp_path)
    _fail_savefig(monkeypatch)  # a save failing half-way leaves the previous figures whole
    with pytest.raises(OSError, match="No space left"):
        demo(args)
    assert _hashes(tmp_path) == before


# --- cnn_jax/plots.py ---------------------------------------------------------------------------------------


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    history = [dict(epoch=e, train_loss=1 / e, train_accuracy=1 - 0.5 / e, val_loss=0.5, val_accuracy=0.8)
               for e in range(1, 4)]
    path = plots.plot_history(history, tmp_path / "curves.png")
    with Image.open(path) as im:  # the temporary name has no .png suffix: the format is said explicitly
        assert im.format == "PNG" and im.size[0] > 200
    path = plots.plot_comparison({"a": history}, tmp_path / "comparison.png", metadata={"cnn_jax": "test"})
    with Image.open(path) as im:
        assert im.info.get("cnn_jax") == "test"
    before = _hashes(tmp_path)
    _fail_savefig(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        plots.plot_history(history, tmp_path / "curves.png")
    assert _hashes(tmp_path) == before
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # the figure is closed even when the save fails
