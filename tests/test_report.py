"""Run comparison report: two tiny real runs compared (table numbers = results.json, conclusion, figure), the
conclusion follows the numbers on hand-made runs, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_jax.report import TABLE_COLUMNS, ReportError, main, overfitting, subset_sizes, write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--limit", "1500", "--val-size", "300", "--no-progress"]


@pytest.fixture(scope="module")
def runs(fashion_tfds_dir, tmp_path_factory) -> list[Path]:
    """Two real runs: the lab preset, and the best preset's optimiser (AdamW, one-cycle, 3e-3) on the lab CNN
    without augmentation (the bn_cnn + augmentation is too slow for a test)."""
    from cnn_jax.cli import main as run

    workdir = tmp_path_factory.mktemp("runs")
    common = [*TINY, "--data-dir", str(fashion_tfds_dir), "--workdir", str(workdir)]
    run("fashion_mnist", [*common, "--preset", "lab", "--run", "lab"])
    run("fashion_mnist", [*common, "--preset", "best", "--model", "lab_cnn", "--augment", "--lr", "3e-3",
                          "--run", "adamw"])
    return [workdir / "lab", workdir / "adamw"]


def _table(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header) == TABLE_COLUMNS
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].strip()


def test_report_of_two_real_runs(runs, tmp_path):
    out = tmp_path / "sub" / "report.md"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    text = out.read_text()
    table = _table(text)
    assert set(table) == {"lab", "adamw"}
    results = {p.name: json.loads((p / "results.json").read_text()) for p in runs}
    for name, r in results.items():
        row = table[name]
        assert (row["dataset"], row["model"]) == (r["dataset"], r["model"])
        assert int(row["epochs"]) == r["epochs"] == 2
        for col, key in (("train acc (%)", "train_accuracy"), ("val acc (%)", "val_accuracy"),
                         ("test acc (%)", "test_accuracy")):
            assert float(row[col]) == pytest.approx(100 * r[key], abs=0.005 + 1e-9), col
        last = [json.loads(x) for x in (runs[0].parent / name / "metrics.jsonl").read_text().splitlines()][-1]
        assert float(row["train-eval acc (%)"]) == pytest.approx(100 * last["train_eval_accuracy"], abs=0.005 + 1e-9)
        assert float(row["train-eval - val gap (points)"]) == pytest.approx(
            100 * (last["train_eval_accuracy"] - r["val_accuracy"]), abs=0.005 + 1e-9)
        assert int(row["epochs to best val"]) == r["best_epoch"]
        assert float(row["wall time (s)"]) == pytest.approx(r["wall_seconds"], abs=0.05 + 1e-9)
        assert float(row["images/s"]) == pytest.approx(r["images_per_s"], abs=0.5 + 1e-9)
        worst = sorted(r["per_class_accuracy"], key=r["per_class_accuracy"].get)[:3]
        line = next(x for x in _section(text, "Per-class weaknesses").splitlines() if x.startswith(f"- **{name}**"))
        assert [c.split(" ")[0] for c in line.split(": ", 1)[1].split(", ")] == [w.split(" ")[0] for w in worst]

    conclusion = _section(text, "Conclusion")
    acc = {n: r["test_accuracy"] for n, r in results.items()}
    better, worse = sorted(acc, key=acc.get, reverse=True)
    if 100 * (acc[better] - acc[worse]) >= 0.1:
        assert conclusion.startswith(f"{better} is the most accurate run: {100 * acc[better]:.2f}% test accuracy, "
                                     f"{100 * (acc[better] - acc[worse]):.1f} point")
    else:
        assert "equally accurate" in conclusion
    hardest = min(results["lab"]["per_class_accuracy"],
                  key=lambda c: sum(r["per_class_accuracy"][c] for r in results.values()))
    assert f"The hardest class is {hardest}" in conclusion

    data = json.loads(out.with_suffix(".json").read_text())  # what the prose renders
    assert " ".join(data["conclusion"]) == conclusion
    assert data["accuracy"]["most_accurate"] == better
    for name in ("lab", "adamw"):
        v = data["runs"][name]["overfitting"]
        assert v["overfits"] in (True, False, "unclear") and v["reasons"]
        assert f"{name} " in conclusion and v["reasons"][0] in conclusion
    figure = out.with_suffix(".png")
    assert f"]({figure.name})" in text
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(figure)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600 and float(np.std(img)) > 0.01


def _history(train_eval: list[float], val_acc: list[float], val_loss: list[float], running=None,
             train_eval_loss=None) -> list[dict]:
    """Per-epoch metrics; the running-mean train accuracy defaults to the train-eval one."""
    running = running or train_eval
    te_loss = train_eval_loss or [vl - 0.05 for vl in val_loss]
    return [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": 1.0, "train_accuracy": r, "seconds": 1.0,
             "train_eval_accuracy": t, "train_eval_loss": tl, "val_loss": vl, "val_accuracy": v}
            for i, (r, t, tl, v, vl) in enumerate(zip(running, train_eval, te_loss, val_acc, val_loss, strict=True))]


def _fake_run(root: Path, name: str, test_acc: float, train_acc: list[float], val_acc: list[float],
              val_loss: list[float], per_class: dict[str, float], images_per_s: float = 1000.0,
              num_val: int | None = 1000, **extra) -> Path:
    d = root / name
    d.mkdir(parents=True)
    hist = [{**h, "images_per_s": images_per_s} for h in _history(train_acc, val_acc, val_loss)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
    best = max(hist, key=lambda h: h["val_accuracy"])
    (d / "results.json").write_text(json.dumps({
        "dataset": "fashion_mnist", "model": "lab_cnn", "epochs": len(hist),
        "train_accuracy": train_acc[-1], "val_accuracy": val_acc[-1], "test_accuracy": test_acc, "test_loss": 0.5,
        "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "per_class_accuracy": per_class,
        "class_names": list(per_class), "wall_seconds": 10.0, "images_per_s": images_per_s, "num_test": 10000,
        **({} if num_val is None else {"num_train": 9000, "num_val": num_val}), **extra}))
    return d


CLASSES = dict(a=0.9, b=0.5, c=0.7, d=0.95, e=0.8)


def test_overfitting_is_judged_by_sound_signs():
    # validation above training all along (dropout, augmentation; a first epoch from random weights), the
    # validation loss still falling: not overfitting, whatever its first epoch's running mean says
    digits = _history([0.95, 0.97, 0.975, 0.978, 0.98, 0.981], [0.96, 0.975, 0.98, 0.982, 0.984, 0.985],
                      [0.15, 0.09, 0.07, 0.06, 0.055, 0.05], running=[0.75, 0.94, 0.96, 0.97, 0.97, 0.975])
    v = overfitting(digits, (1000, 1000))
    assert v["overfits"] is False and v["signs"] == {"gap": False, "val_loss_rises": False, "gap_widens": False}
    assert v["gap_points"] == pytest.approx(-0.4) and v["reasons"][0].startswith("no: ")
    # train-eval pulls away while the validation loss rises after its minimum: overfitting
    fashion = _history([0.86, 0.90, 0.93, 0.95, 0.965, 0.975], [0.86, 0.885, 0.895, 0.90, 0.902, 0.901],
                       [0.38, 0.31, 0.28, 0.27, 0.29, 0.31])
    v = overfitting(fashion, (5000, 5000))
    assert v["overfits"] is True and all(v["signs"].values())
    se = 100 * (0.975 * 0.025 / 5000 + 0.901 * 0.099 / 5000) ** 0.5  # binomial SEs of both, combined
    assert v["gap_points"] == pytest.approx(7.4) and v["gap_se_points"] == pytest.approx(se)
    assert v["gap_z"] == pytest.approx(7.4 / se) and v["val_loss_min_epoch"] == 4
    assert v["reasons"][0].startswith("yes: final train-eval accuracy 97.50% vs validation 90.10% (5,000 and 5,000 "
                                      f"images): gap +7.4 points, +{7.4 / se:.1f} standard errors (one is {se:.2f} "
                                      "points)")
    assert "yes: validation loss 0.3100 at epoch 6 against its minimum 0.2700 at epoch 4" == v["reasons"][1]
    # a steady gap, the validation loss still falling: the signs disagree, and the report says so
    mixed = _history([0.90, 0.93, 0.94, 0.945, 0.95, 0.955], [0.88, 0.905, 0.915, 0.92, 0.925, 0.93],
                     [0.40, 0.33, 0.30, 0.28, 0.27, 0.26])
    v = overfitting(mixed, (5000, 5000))
    assert v["overfits"] == "unclear" and v["signs"] == {"gap": True, "val_loss_rises": False, "gap_widens": False}
    assert v["reasons"][0].startswith("yes: final train-eval") and v["reasons"][1].startswith("no: validation loss")
    assert overfitting([{"epoch": 1, "train_accuracy": 0.5}])["overfits"] == "unclear"  # no train-eval figures


def test_the_gap_is_weighed_against_its_noise():
    """The same curves: a +0.8-point gap is noise on 1,000 images (standard error about 0.75 points) and a sign on
    100,000 (0.08); the validation loss rising and the gap widening do not make a noisy gap count."""
    curves = _history([0.95, 0.96, 0.965, 0.97, 0.974, 0.978], [0.95, 0.958, 0.962, 0.966, 0.968, 0.970],
                      [0.15, 0.12, 0.10, 0.09, 0.095, 0.10])
    small = overfitting(curves, (1000, 1000))
    se = 100 * (0.978 * 0.022 / 1000 + 0.97 * 0.03 / 1000) ** 0.5
    assert small["gap_se_points"] == pytest.approx(se) and 0.7 < se < 0.8
    assert small["gap_beyond_noise"] is False and small["signs"]["gap"] is False
    assert small["signs"]["val_loss_rises"] and small["signs"]["gap_widens"]
    assert small["overfits"] == "unclear"
    assert small["reasons"][0].startswith("within noise: final train-eval accuracy 97.80% vs validation 97.00% "
                                          f"(1,000 and 1,000 images): gap +0.8 points, +{0.8 / se:.1f} standard "
                                          "errors")
    large = overfitting(curves, (100_000, 100_000))
    assert large["gap_beyond_noise"] is True and large["overfits"] is True and large["reasons"][0].startswith("yes:")
    # a gap within the noise and no other sign: still unclear, not "no"; without sizes the noise is unknown
    flat = _history([0.95, 0.96, 0.965, 0.97, 0.9705, 0.971], [0.95, 0.958, 0.962, 0.966, 0.967, 0.968],
                    [0.15, 0.12, 0.10, 0.09, 0.085, 0.08])
    v = overfitting(flat, (1000, 1000))
    assert v["overfits"] == "unclear" and not any(v["signs"].values()) and v["reasons"][0].startswith("within noise")
    unknown = overfitting(flat)
    assert unknown["overfits"] == "unclear" and unknown["gap_se_points"] is None
    assert unknown["reasons"][0].startswith("noise unknown: ") and "its noise is unknown" in unknown["reasons"][0]
    # the sizes of a run: recorded, else training's rule (the validation set's size, at most the training split)
    assert subset_sizes({"num_train": 55000, "num_val": 5000}) == (5000, 5000)
    assert subset_sizes({"num_train": 700, "num_val": 1000}) == (700, 1000)
    assert subset_sizes({"num_train": 700, "num_val": 0}) == (700, 0)
    assert subset_sizes({"num_train_eval": 321, "num_train": 700, "num_val": 1000}) == (321, 1000)
    assert subset_sizes({}) == (None, None)


def test_the_margin_names_both_test_sizes_when_they_differ(tmp_path):
    big = _fake_run(tmp_path, "big", 0.90, [0.8, 0.9], [0.8, 0.9], [0.5, 0.4], CLASSES)
    small = _fake_run(tmp_path, "small", 0.80, [0.8, 0.9], [0.8, 0.9], [0.5, 0.4], CLASSES, num_test=1000)
    c = _section(write_report([big, small], tmp_path / "r.md")["text"], "Conclusion")
    assert "With 10,000 (big) and 1,000 (small) test images that margin is" in c
    same = _fake_run(tmp_path, "same", 0.80, [0.8, 0.9], [0.8, 0.9], [0.5, 0.4], CLASSES)
    assert "With 10,000 test images that margin is" in _section(write_report([big, same], tmp_path / "s.md")["text"],
                                                                   "Conclusion")


def test_conclusion_follows_the_numbers(tmp_path):
    # "steady" generalises; "overfit" fits the train set ever better while its val loss turns up after epoch 2
    steady = _fake_run(tmp_path, "steady", 0.88, [0.80, 0.85, 0.87, 0.88], [0.81, 0.85, 0.87, 0.88],
                       [0.6, 0.5, 0.45, 0.42], CLASSES, 2000.0)
    overfit = _fake_run(tmp_path, "overfit", 0.84, [0.80, 0.90, 0.96, 0.99], [0.80, 0.85, 0.85, 0.84],
                        [0.6, 0.45, 0.5, 0.6], {**CLASSES, "b": 0.3, "d": 0.6}, 1000.0)
    out = write_report([steady, overfit], tmp_path / "r.md")
    c = _section(out["text"], "Conclusion")
    assert c.startswith("steady is the most accurate run: 88.00% test accuracy, 4.0 points ahead of overfit")
    assert "4.0 points ahead" in c and "more than noise" in c
    assert ("steady does not overfit: no: final train-eval accuracy 88.00% vs validation 88.00% (1,000 and 1,000 "
            "images): gap +0.0 points") in c
    assert ("overfit overfits: yes: final train-eval accuracy 99.00% vs validation 84.00% (1,000 and 1,000 images): "
            "gap +15.0 points") in c
    assert "yes: validation loss 0.6000 at epoch 4 against its minimum 0.4500 at epoch 2" in c
    se_overfit = 100 * (0.99 * 0.01 / 1000 + 0.84 * 0.16 / 1000) ** 0.5
    se_steady = 100 * (2 * 0.88 * 0.12 / 1000) ** 0.5
    se_diff = (se_overfit ** 2 + se_steady ** 2) ** 0.5
    assert (f"overfit overfits more than steady: its final train-eval - validation gap is +15.0 points (standard "
            f"error {se_overfit:.1f}) against +0.0 points (standard error {se_steady:.1f}); the difference, 15.0 "
            f"points, is {15 / se_diff:.1f} standard errors: more than noise.") in c
    assert "The hardest class is b" in c and "The runs differ most on d: steady gets 95.0%, overfit 60.0%" in c
    assert "steady trains fastest (2000 images/s, 2.0x overfit's 1000)" in c
    assert _table(out["text"])["overfit"]["train-eval - val gap (points)"] == "15.00"
    assert _table(out["text"])["overfit"]["overfits"] == "true"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["runs"]["overfit"]["overfitting"]["overfits"] is True
    assert data["runs"]["steady"]["overfitting"]["overfits"] is False
    assert data["accuracy"] == {"most_accurate": "steady", "runner_up": "overfit", "margin_points": pytest.approx(4.0),
                                "two_se_points": pytest.approx(200 * (0.88 * 0.12 / 1e4 + 0.84 * 0.16 / 1e4) ** 0.5),
                                "exceeds_noise": True}
    assert data["conclusion"] == out["conclusion"]
    assert data["overfitting_comparison"] == {
        "more": "overfit", "less": "steady", "of_runs": 2,
        "gap_points": {"overfit": pytest.approx(15.0), "steady": pytest.approx(0.0)},
        "gap_se_points": {"overfit": pytest.approx(se_overfit), "steady": pytest.approx(se_steady)},
        "difference_points": pytest.approx(15.0), "difference_se_points": pytest.approx(se_diff),
        "difference_z": pytest.approx(15 / se_diff), "exceeds_noise": True}

    # two gaps whose difference is within its noise: the larger one is named, not said to overfit more
    near = _fake_run(tmp_path, "near", 0.9, [0.80, 0.90, 0.95, 0.975], [0.80, 0.89, 0.94, 0.96],
                     [0.6, 0.4, 0.3, 0.25], CLASSES)
    nearer = _fake_run(tmp_path, "nearer", 0.9, [0.80, 0.90, 0.95, 0.97], [0.80, 0.89, 0.94, 0.96],
                       [0.6, 0.4, 0.3, 0.25], CLASSES)
    c = _section(write_report([near, nearer], tmp_path / "r4.md")["text"], "Conclusion")
    assert "near has a larger gap than nearer: its final train-eval - validation gap is +1.5 points" in c
    assert "within noise, so neither overfits measurably more." in c and "overfits more than" not in c

    # other numbers, other conclusion: a tie, and no run overfitting
    a = _fake_run(tmp_path, "x/a", 0.9, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    b = _fake_run(tmp_path, "x/b", 0.9004, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    c = _section(write_report([a, b], tmp_path / "r2.md")["text"], "Conclusion")
    assert "b and a are equally accurate" in c and "a does not overfit" in c and "b does not overfit" in c
    assert "about the same speed" in c and "overfits more than" not in c
    assert "have the same final train-eval - validation gap" in c and "neither overfits more." in c

    # runs with the same folder name are told apart by their parent folder
    twin = _fake_run(tmp_path / "y", "steady", 0.5, [0.5, 0.6], [0.5, 0.6], [0.5, 0.4], CLASSES)
    names = set(_table(write_report([steady, twin], tmp_path / "r3.md")["text"]))
    assert len(names) == 2 and all(n.endswith("/steady") for n in names)


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    good = _fake_run(tmp_path, "good", 0.9, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    other = _fake_run(tmp_path, "other", 0.8, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"epoch": 1}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([good, empty], "empty: not a run folder, no results.json or metrics.jsonl"),
        ([good, unfinished], "unfinished: not a run folder, no results.json (the run has not finished"),
        ([good, tmp_path / "missing"], "missing: no such folder"),
        ([good], "need at least two run folders to compare, got 1"),
        ([good, good], "the same run folder is given twice"),
        ([good, other, "--out", str(a_file / "report.md")], "a_file is a file, not a folder"),
        ([good, other, "--out", str(tmp_path)], "is a folder; give a file name"),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    with pytest.raises(ReportError, match="unreadable"):
        (good / "results.json").write_text("{not json")
        write_report([good, other], tmp_path / "r.md")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_out(tmp_path, capsys):
    good = _fake_run(tmp_path, "good", 0.9, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    other = _fake_run(tmp_path, "other", 0.8, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([str(good), str(other), "--out", str(ro / "report.md")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_script_exit_status(tmp_path):
    good = _fake_run(tmp_path, "good", 0.9, [0.8, 0.85], [0.8, 0.85], [0.5, 0.4], CLASSES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), str(good), str(tmp_path / "no")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "no such folder" in out.stderr


def test_study_in_one_command(fashion_tfds_dir, tmp_path, capsys):
    """The notebook's study end to end: lab on Fashion-MNIST against lab on digits in NIST's layout (synthetic),
    compared; report.json agrees with both runs' metrics and its verdicts follow the numbers in it."""
    import runpy

    from test_data import make_emnist_zip

    zip_path = make_emnist_zip(tmp_path / "nist" / "gzip.zip", n_train=600, n_test=200)
    data = tmp_path / "tfds"
    shutil.copytree(fashion_tfds_dir, data)
    study = runpy.run_path(str(ROOT / "experiments" / "study.py"), run_name="study")["main"]
    flags = ["--", "--epochs", "2", "--limit", "1000", "--val-size", "200", "--batch-size", "64", "--no-progress",
             "--data-dir", str(data), "--no-verify"]
    out = tmp_path / "study" / "report.md"
    result = study(["--emnist-source", str(zip_path), "--workdir", str(tmp_path / "runs"), "--out", str(out), *flags])
    data_json = json.loads(out.with_suffix(".json").read_text())
    assert set(data_json["runs"]) == {"fashion_mnist/lab", "emnist_digits/lab"}
    for name, run in data_json["runs"].items():
        run_dir = tmp_path / "runs" / name
        history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results = json.loads((run_dir / "results.json").read_text())
        assert run["test_accuracy"] == results["test_accuracy"] and run["epochs"] == len(history) == 2
        assert run["train_eval_accuracy"] == history[-1]["train_eval_accuracy"]
        verdict = overfitting(history, subset_sizes(results))  # the verdict follows the numbers, with their noise
        assert run["overfitting"] == json.loads(json.dumps(verdict)) and run["overfitting"]["val_size"] == 200
        assert run["overfitting"]["gap_se_points"] > 0 and run["dataset"] == results["dataset"]
        assert run["overfitting"]["gap_points"] == pytest.approx(
            100 * (history[-1]["train_eval_accuracy"] - history[-1]["val_accuracy"]))
    assert " ".join(data_json["conclusion"]) == " ".join(result["conclusion"])
    # resumable like any run: the same command reports the finished runs and writes the same comparison
    again = study(["--emnist-source", str(zip_path), "--workdir", str(tmp_path / "runs"), "--out", str(out), *flags])
    assert again["conclusion"] == result["conclusion"] and "already complete" in capsys.readouterr().out
    # without EMNIST's files: the digits run is skipped, saying how to get them, and the rest is done
    (tmp_path / "runs" / "emnist_digits").rename(tmp_path / "digits_elsewhere")
    shutil.rmtree(data / "emnist")
    assert study(["--workdir", str(tmp_path / "runs"), "--out", str(out), *flags]) is None
    printed = capsys.readouterr()
    assert "EMNIST Digits skipped" in printed.err and "gzip.zip" in printed.err
    assert "nothing to compare; it overfits: " in printed.out
