"""Compare finished runs: a Markdown report with a side-by-side table, per-class weaknesses, a conclusion
computed from the numbers (``report.json`` beside it holds them, with each run's overfitting verdict), and a
figure (validation accuracy, validation loss and train-eval - val gap per epoch): ``<stem>.md``, ``<stem>.json``
and ``<stem>.png`` for ``--out <stem>.md``, written atomically, never into a run folder, and replacing only an
earlier report of ours (each file is marked as one), never a user's file.

    python experiments/compare.py checkpoints/fashion_mnist/lab checkpoints/fashion_mnist/best --out report.md

A run folder is what ``experiments/<dataset>.py`` writes: ``results.json`` (final metrics) and ``metrics.jsonl``
(one line per epoch).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.files import owner, unwritable, write_json, write_text

__all__ = ["ReportError", "Run", "read_run", "summarize", "overfitting", "overfitting_comparison", "margin",
           "beyond_noise", "subset_sizes", "dataset_label", "verdict_words", "conclusion", "render", "report_data",
           "report_paths", "check_out", "write_report", "main"]

#: Differences below this many accuracy points (percent) count as a tie.
TIE_POINTS = 0.1
#: A difference of accuracies (a train-eval - validation gap, two runs' gaps, two test accuracies) is beyond the
#: noise when it exceeds this many of its standard errors (binomial, from the sizes of the sets measured).
NOISE_SE = 2.0
#: Growth of that gap over the second half of training (points per epoch) that counts as widening.
TREND_POINTS = 0.1
#: Relative rise of the validation loss above its minimum that counts as "rising again".
VAL_LOSS_RISE = 0.01


class ReportError(ValueError):
    """A problem with the inputs or the output path, said in one line."""


@dataclass
class Run:
    """One finished run: its folder, ``results.json`` and ``metrics.jsonl`` history."""

    path: Path
    results: dict[str, Any]
    history: list[dict[str, Any]]
    name: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder; :class:`ReportError` if it is not a finished run."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such folder")
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder; expected a run folder with results.json and metrics.jsonl")
    missing = [f for f in ("results.json", "metrics.jsonl") if not (path / f).is_file()]
    if missing:
        hint = (" (the run has not finished: resume it with the same experiment command first)"
                if missing == ["results.json"] else "")
        raise ReportError(f"{path}: not a run folder, no {' or '.join(missing)}{hint}")
    results = _read_json(path / "results.json")
    if not isinstance(results, dict) or "test_accuracy" not in results:
        raise ReportError(f"{path / 'results.json'}: not a cnn_jax results file (no test_accuracy)")
    history = []
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path / 'metrics.jsonl'}: unreadable ({type(e).__name__})") from e
    if not history:
        raise ReportError(f"{path / 'metrics.jsonl'}: empty, the run has no finished epoch")
    return Run(path, results, history)


def _names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the folder name, or as many trailing path parts as needed to tell them apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _gap(h: dict[str, Any]) -> float | None:
    """Train-eval - validation accuracy (both in evaluation mode); None without train-eval figures."""
    if h.get("train_eval_accuracy") is None or h.get("val_accuracy") is None:
        return None
    return h["train_eval_accuracy"] - h["val_accuracy"]


def beyond_noise(points: float, se_points: float | None) -> bool | None:
    """The one noise rule: whether a difference of ``points`` exceeds :data:`NOISE_SE` of its standard errors
    ``se_points`` (a standard error of 0 with a positive difference: yes); None when the error is unknown."""
    if se_points is None:
        return None
    return bool(points > 0 and (se_points == 0 or points / se_points >= NOISE_SE))


def _se(p: float, n: int | None) -> float | None:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` examples (None without ``n``)."""
    return math.sqrt(p * (1 - p) / n) if n else None


def subset_sizes(results: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(train-eval subset size, validation size)`` of a run: ``num_train_eval`` when recorded, else training's
    rule (:func:`cnn_jax.loop.train_eval_size`) for runs saved before it was, and ``num_val``."""
    from cnn_jax.loop import train_eval_size

    n_val, n_train = results.get("num_val"), results.get("num_train")
    n_te = results.get("num_train_eval")
    if n_te is None and n_train is not None and n_val is not None:
        n_te = train_eval_size(n_train, n_val)
    return n_te, n_val


def _gap_se(h: dict[str, Any], sizes: tuple[int | None, int | None]) -> float | None:
    """Standard error (points) of an epoch's train-eval - validation gap: sqrt(se_train_eval^2 + se_val^2)."""
    se_te, se_val = _se(h["train_eval_accuracy"], sizes[0]), _se(h["val_accuracy"], sizes[1])
    return None if se_te is None or se_val is None else 100 * math.hypot(se_te, se_val)


def overfitting(history: Sequence[dict[str, Any]], sizes: tuple[int | None, int | None] = (None, None)
                ) -> dict[str, Any]:
    """Whether a run overfits, by three signs from evaluation-mode figures, each stated with its numbers:
    the final train-eval - validation accuracy gap against its standard error (``sizes``: the train-eval subset's
    and the validation set's, :func:`subset_sizes`), the validation loss rising after its minimum, and the gap's
    trend over the second half of training (never the first epoch against the last). The gap is a sign when it is
    beyond the noise (:func:`beyond_noise`), none when it is not positive, and within the noise in between.
    ``overfits``: True (the gap and another sign), False (no sign, the gap not positive), ``"unclear"`` (the signs
    disagree, or the gap is within the noise or its noise unknown)."""
    ev = [h for h in history if _gap(h) is not None]
    if not ev:
        return {"overfits": "unclear", "reasons": ["no train-eval figures: the run predates them, or has no "
                                                   "validation set"]}
    last = ev[-1]
    se = _gap_se(last, sizes)
    out: dict[str, Any] = {"gap_points": 100 * _gap(last), "gap_se_points": se,
                           "gap_z": None if not se else 100 * _gap(last) / se,
                           "loss_gap": last["val_loss"] - last["train_eval_loss"],
                           "train_eval_size": sizes[0], "val_size": sizes[1]}
    half = ev[len(ev) // 2:] if len(ev) >= 4 else []
    out["trend_points_per_epoch"] = float(np.polyfit([h["epoch"] for h in half], [100 * _gap(h) for h in half],
                                                     1)[0]) if half else None
    losses = [(h["epoch"], h["val_loss"]) for h in ev]
    (min_epoch, min_loss), (last_epoch, last_loss) = min(losses, key=lambda e: e[1]), losses[-1]
    out.update(val_loss_min=min_loss, val_loss_min_epoch=min_epoch, val_loss_last=last_loss)
    gap_on = beyond_noise(out["gap_points"], se)
    out["gap_beyond_noise"] = gap_on
    within = not gap_on and out["gap_points"] > 0  # positive, not beyond the noise (or its noise unknown)
    sizes_text = "" if None in sizes else f" ({sizes[0]:,} and {sizes[1]:,} images)"
    noise = ("; the run records no subset sizes, so its noise is unknown" if se is None else
             f", {out['gap_z']:+.1f} standard errors (one is {se:.2f} points)" if se else ", no sampling noise")
    signs = {
        "gap": (gap_on,
                f"final train-eval accuracy {_pct(last['train_eval_accuracy'])}% vs validation "
                f"{_pct(last['val_accuracy'])}%{sizes_text}: gap {out['gap_points']:+.1f} points{noise}; loss gap "
                f"{out['loss_gap']:+.4f}"),
        "val_loss_rises": (last_epoch != min_epoch and last_loss > min_loss * (1 + VAL_LOSS_RISE),
                           f"validation loss {last_loss:.4f} at epoch {last_epoch} against its minimum "
                           f"{min_loss:.4f} at epoch {min_epoch}"),
        "gap_widens": (out["trend_points_per_epoch"] is not None and out["trend_points_per_epoch"] > TREND_POINTS,
                       "too few epochs for a trend" if not half else
                       f"gap trend {out['trend_points_per_epoch']:+.2f} points/epoch over epochs "
                       f"{half[0]['epoch']}-{half[-1]['epoch']}"),
    }
    out["signs"] = {k: bool(v[0]) for k, v in signs.items()}
    present = [k for k, (on, _) in signs.items() if on]
    out["overfits"] = (True if "gap" in present and len(present) >= 2 else
                       False if not present and not within else "unclear")
    unsure = "within noise: " if se is not None else "noise unknown: "
    out["reasons"] = [(unsure if k == "gap" and within else "yes: " if on else "no: ") + text
                      for k, (on, text) in signs.items()]
    return out


def overfitting_comparison(runs: list[Run]) -> dict[str, Any] | None:
    """Which run overfits more: the two largest final train-eval - validation gaps, their difference and whether
    it is beyond the noise (:func:`beyond_noise`; standard error sqrt(se_a^2 + se_b^2)). None with fewer than two
    runs with train-eval figures."""
    gaps = [(r, r.summary["overfitting"]) for r in runs if r.summary["overfitting"].get("gap_points") is not None]
    if len(gaps) < 2:
        return None
    (a, va), (b, vb) = sorted(gaps, key=lambda rv: rv[1]["gap_points"], reverse=True)[:2]
    diff = va["gap_points"] - vb["gap_points"]
    se = (None if va["gap_se_points"] is None or vb["gap_se_points"] is None
          else math.hypot(va["gap_se_points"], vb["gap_se_points"]))
    return {"more": a.name, "less": b.name, "of_runs": len(gaps),
            "gap_points": {a.name: va["gap_points"], b.name: vb["gap_points"]},
            "gap_se_points": {a.name: va["gap_se_points"], b.name: vb["gap_se_points"]},
            "difference_points": diff, "difference_se_points": se, "difference_z": diff / se if se else None,
            "exceeds_noise": beyond_noise(diff, se)}


def _comparison_sentence(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return []
    a, b = c["more"], c["less"]

    def gap(name: str) -> str:
        se = c["gap_se_points"][name]
        return f"{c['gap_points'][name]:+.1f} points" + ("" if se is None else f" (standard error {se:.1f})")

    if round(c["difference_points"], 1) == 0:
        return [f"{a} and {b} have the same final train-eval - validation gap ({gap(a)} and {gap(b)}): neither "
                "overfits more."]
    diff = f"the difference, {c['difference_points']:.1f} points,"
    if c["exceeds_noise"] and c["difference_z"] is None:
        verdict = f"{diff} has no sampling noise to exceed."
    elif c["exceeds_noise"] is None:
        verdict = f"{diff} cannot be weighed against its noise (no subset sizes recorded)."
    elif c["exceeds_noise"]:
        verdict = f"{diff} is {c['difference_z']:.1f} standard errors: more than noise."
    else:
        z = "" if c["difference_z"] is None else f" is {c['difference_z']:.1f} standard errors:"
        verdict = f"{diff}{z} within noise, so neither overfits measurably more."
    largest = f"Of {c['of_runs']} runs, {a} has the largest gap. " if c["of_runs"] > 2 else ""
    word = "overfits more than" if c["exceeds_noise"] else "has a larger gap than"
    return [f"{largest}{a} {word} {b}: its final train-eval - validation gap is {gap(a)} against {gap(b)}; "
            f"{verdict}"]


def dataset_label(results: dict[str, Any]) -> str:
    """How a run's data are named to a user: a stand-in's label (``results.json``'s ``data_source``), never the
    name of the dataset it stands in for; else the dataset's name."""
    record = results.get("data_source")
    return record["label"] if isinstance(record, dict) and record.get("label") else str(results.get("dataset"))


def summarize(run: Run) -> dict[str, Any]:
    """The numbers the table and the conclusion use (accuracies as fractions, as in ``results.json``)."""
    r, hist = run.results, run.history
    per_class = r.get("per_class_accuracy") or {}
    return {
        "dataset": dataset_label(r), "tfds_name": r.get("dataset"), "data_source": r.get("data_source"),
        "model": r.get("model"), "epochs": r.get("epochs", len(hist)),
        "train_accuracy": r.get("train_accuracy"), "train_eval_accuracy": hist[-1].get("train_eval_accuracy"),
        "val_accuracy": r.get("val_accuracy"), "test_accuracy": r.get("test_accuracy"),
        "test_loss": r.get("test_loss"), "num_test": r.get("num_test"), "gap": _gap(hist[-1]),
        "best_epoch": r.get("best_epoch"), "best_val_accuracy": r.get("best_val_accuracy"),
        "wall_seconds": r.get("wall_seconds"), "images_per_s": r.get("images_per_s"),
        "worst_classes": sorted(per_class.items(), key=lambda kv: kv[1])[:3],
        "per_class_accuracy": per_class, "overfitting": overfitting(hist, subset_sizes(r)),
    }


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} point{'' if round(100 * x, 1) == 1 else 's'}"


def margin(runs: list[Run]) -> dict[str, Any]:
    """The most accurate run on the test set, its margin over the next and whether that exceeds the noise
    (two standard errors of the difference of two proportions)."""
    top, second = sorted(runs, key=lambda r: r.summary["test_accuracy"], reverse=True)[:2]
    p1, p2 = top.summary["test_accuracy"], second.summary["test_accuracy"]
    n1, n2 = top.summary["num_test"], second.summary["num_test"]
    se = 100 * math.hypot(_se(p1, n1), _se(p2, n2)) if n1 and n2 else None
    return {"most_accurate": top.name, "runner_up": second.name, "margin_points": 100 * (p1 - p2),
            "two_se_points": None if se is None else NOISE_SE * se,
            "exceeds_noise": beyond_noise(100 * (p1 - p2), se)}


def _accuracy_sentences(runs: list[Run]) -> list[str]:
    ranked = sorted(runs, key=lambda r: r.summary["test_accuracy"], reverse=True)
    top, second, last = ranked[0], ranked[1], ranked[-1]
    diff = top.summary["test_accuracy"] - second.summary["test_accuracy"]
    m = margin(runs)
    out = []
    if diff * 100 < TIE_POINTS:
        out.append(f"{top.name} and {second.name} are equally accurate on the test set "
                   f"({_pct(top.summary['test_accuracy'])}% vs {_pct(second.summary['test_accuracy'])}%, "
                   f"less than {TIE_POINTS} points apart).")
    else:
        out.append(f"{top.name} is the most accurate run: {_pct(top.summary['test_accuracy'])}% test accuracy, "
                   f"{_pts(diff)} ahead of {second.name} ({_pct(second.summary['test_accuracy'])}%).")
        if m["exceeds_noise"] is not None:
            n1, n2 = top.summary["num_test"], second.summary["num_test"]
            n = f"{n1:,}" if n1 == n2 else f"{n1:,} ({top.name}) and {n2:,} ({second.name})"
            out.append(f"With {n} test images that margin is " + (
                f"more than noise (two standard errors are {m['two_se_points']:.1f} points)." if m["exceeds_noise"]
                else f"within noise (two standard errors are {m['two_se_points']:.1f} points)."))
    if len(ranked) > 2:
        out.append(f"The least accurate is {last.name} with {_pct(last.summary['test_accuracy'])}%, "
                   f"{_pts(top.summary['test_accuracy'] - last.summary['test_accuracy'])} behind {top.name}.")
    with_val = [r for r in runs if r.summary.get("best_val_accuracy") is not None]
    if len(with_val) == len(runs):
        best_val = max(runs, key=lambda r: r.summary["best_val_accuracy"])
        if best_val is not top and diff * 100 >= TIE_POINTS:
            out.append(f"Validation disagrees: {best_val.name} reached the highest validation accuracy "
                       f"({_pct(best_val.summary['best_val_accuracy'])}%), not {top.name}.")
    datasets = {r.summary["dataset"] for r in runs}
    if len(datasets) > 1:
        out.append(f"The runs are on different datasets ({', '.join(sorted(map(str, datasets)))}), "
                   "so their accuracies are not directly comparable.")
    return out


def _overfitting_sentences(runs: list[Run]) -> list[str]:
    verdicts = {r.name: r.summary["overfitting"] for r in runs}
    out = []
    for name, v in verdicts.items():
        out.append(f"{name} {verdict_words(v)}: {'; '.join(v['reasons'])}.")
    return out + _comparison_sentence(overfitting_comparison(runs))


def verdict_words(v: dict[str, Any]) -> str:
    """"overfits", "does not overfit", or "may or may not overfit" (and why, when its reasons do not say)."""
    if v["overfits"] is True:
        return "overfits"
    if v["overfits"] is False:
        return "does not overfit"
    if v.get("gap_points") is None or (v["gap_points"] > 0 and not v.get("gap_beyond_noise")):
        return "may or may not overfit"  # its reasons say why: no figures, or a gap within (or of unknown) noise
    return "may or may not overfit (the signs disagree)"


def _class_sentences(runs: list[Run]) -> list[str]:
    if any(not r.summary["per_class_accuracy"] for r in runs):
        return []
    names = [list(r.summary["per_class_accuracy"]) for r in runs]
    if any(n != names[0] for n in names):
        hardest = "; ".join(f"{r.name}: {r.summary['worst_classes'][0][0]}" for r in runs)
        return [f"The runs have different classes; the hardest class of each: {hardest}."]
    mean = {c: sum(r.summary["per_class_accuracy"][c] for r in runs) / len(runs) for c in names[0]}
    hardest = sorted(mean, key=mean.get)[:2]
    common = set.intersection(*({c for c, _ in r.summary["worst_classes"]} for r in runs))
    out = []
    accs = " / ".join(f"{_pct(r.summary['per_class_accuracy'][hardest[0]], 1)}%" for r in runs)
    sentence = (f"The hardest class is {hardest[0]} (accuracy {accs} in {' / '.join(r.name for r in runs)}), "
                f"followed by {hardest[1]} ({_pct(mean[hardest[1]], 1)}% on average)")
    if common:
        sentence += (f"; {' and '.join(sorted(common, key=mean.get))} "
                     f"{'is' if len(common) == 1 else 'are'} among the three worst classes of every run.")
    else:
        sentence += "; the runs have no worst-three class in common."
    out.append(sentence)
    diffs = {c: [r.summary["per_class_accuracy"][c] for r in runs] for c in names[0]}
    c = max(diffs, key=lambda c: max(diffs[c]) - min(diffs[c]))
    spread = max(diffs[c]) - min(diffs[c])
    if spread * 100 >= TIE_POINTS:
        best = runs[diffs[c].index(max(diffs[c]))]
        worst = runs[diffs[c].index(min(diffs[c]))]
        out.append(f"The runs differ most on {c}: {best.name} gets {_pct(max(diffs[c]), 1)}%, "
                   f"{worst.name} {_pct(min(diffs[c]), 1)}%.")
    return out


def _speed_sentences(runs: list[Run]) -> list[str]:
    timed = [r for r in runs if r.summary.get("images_per_s")]
    if len(timed) < 2:
        return []
    fast = max(timed, key=lambda r: r.summary["images_per_s"])
    slow = min(timed, key=lambda r: r.summary["images_per_s"])
    ratio = fast.summary["images_per_s"] / slow.summary["images_per_s"]
    if ratio < 1.05:
        return [f"All runs train at about the same speed ({fast.summary['images_per_s']:.0f} images/s at most)."]
    return [f"{fast.name} trains fastest ({fast.summary['images_per_s']:.0f} images/s, {ratio:.1f}x "
            f"{slow.name}'s {slow.summary['images_per_s']:.0f})."]


def conclusion(runs: list[Run]) -> list[str]:
    """The conclusion's sentences, computed from the runs' summaries."""
    return (_accuracy_sentences(runs) + _overfitting_sentences(runs) + _class_sentences(runs)
            + _speed_sentences(runs))


TABLE_COLUMNS = ("run", "dataset", "model", "epochs", "train acc (%)", "train-eval acc (%)", "val acc (%)",
                 "test acc (%)", "train-eval - val gap (points)", "overfits", "epochs to best val", "wall time (s)",
                 "images/s")


def table_row(run: Run) -> list[str]:
    s = run.summary
    return [run.name, str(s["dataset"]), str(s["model"]), str(s["epochs"]), _pct(s["train_accuracy"]),
            _pct(s["train_eval_accuracy"]), _pct(s["val_accuracy"]), _pct(s["test_accuracy"]), _pct(s["gap"]),
            str(s["overfitting"]["overfits"]).lower(),
            "n/a" if s["best_epoch"] is None else str(s["best_epoch"]),
            "n/a" if s["wall_seconds"] is None else f"{s['wall_seconds']:.1f}",
            "n/a" if s["images_per_s"] is None else f"{s['images_per_s']:.0f}"]


def render(runs: list[Run], figure_name: str | None) -> str:
    """The Markdown report."""
    lines = [MARKDOWN_MARK, "# Run comparison", ""]
    lines += [f"- **{r.name}**: `{r.path}`" for r in runs]
    lines += ["", "## Side by side", "",
              "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in runs]
    lines += ["", "Accuracies are the last epoch's. Train acc is the running mean over the epoch's batches (dropout "
              "and augmentation on); train-eval acc is a fixed training subset evaluated like validation, and the "
              "gap is train-eval - val. Epochs to best val is the epoch with the highest validation accuracy.", ""]
    if figure_name:
        lines += ["## Curves", "", f"![validation accuracy, validation loss and train - val gap]({figure_name})", ""]
    lines += ["## Per-class weaknesses", "", "The three classes with the lowest test accuracy in each run:", ""]
    for r in runs:
        worst = r.summary["worst_classes"]
        text = ", ".join(f"{c} {_pct(a, 1)}%" for c, a in worst) if worst else "no per-class accuracy recorded"
        lines.append(f"- **{r.name}**: {text}")
    lines += ["", "## Conclusion", "", " ".join(conclusion(runs)), ""]
    return "\n".join(lines)


#: What marks the report files as ours, so that re-running a comparison replaces its own previous report and
#: nothing else: the Markdown's first line, the JSON's ``kind`` and a PNG text chunk.
REPORT_KIND = "cnn_jax.compare"
MARKDOWN_MARK = "<!-- written by cnn_jax compare (experiments/compare.py); re-running the comparison replaces it -->"
PNG_MARK = {"cnn_jax": REPORT_KIND}
#: Files that make a folder a run folder (with a ``.cnn_jax`` marker of kind ``run``).
RUN_FILES = ("results.json", "metrics.jsonl", "ckpt")


def report_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The files a report ``--out`` names: ``{"report": <stem>.md, "data": <stem>.json, "figure": <stem>.png}``.
    ``out`` must end in ``.md`` (a name without a suffix gets ``.md``); :class:`ReportError` otherwise."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out}: is a folder; give a file name such as {out / 'report.md'}")
    if out.suffix == "":
        out = out.with_name(out.name + ".md")
    elif out.suffix.lower() != ".md":
        stem = out.with_suffix("")
        raise ReportError(f"--out {out}: the report is Markdown and must end in .md (e.g. --out {stem}.md, which "
                          f"also writes {stem.name}.json and {stem.name}.png)")
    return {"report": out, "data": out.with_suffix(".json"), "figure": out.with_suffix(".png")}


def _run_folder(folder: Path, strict: bool = True) -> str | None:
    """Why ``folder`` is a run folder (marked as one, or holding a run's files: one of :data:`RUN_FILES`, or with
    ``strict=False`` two of them), or None."""
    if owner(folder) == "run":
        return "it is marked as a cnn_jax run folder"
    held = [f for f in RUN_FILES if (folder / f).exists()]
    return f"it holds {' and '.join(held)}" if len(held) >= (1 if strict else 2) else None


def _ours(kind: str, path: Path) -> bool:
    """Whether an existing ``path`` is a report file of ours (written by :func:`write_report`)."""
    from PIL import Image

    try:
        if kind == "report":
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.readline().rstrip("\n") == MARKDOWN_MARK
        if kind == "data":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and data.get("kind") == REPORT_KIND
        with Image.open(path) as im:
            return im.format == "PNG" and all(im.info.get(k) == v for k, v in PNG_MARK.items())
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def check_out(out: str | os.PathLike) -> dict[str, Path]:
    """Check, writing nothing, that a report can go to ``out``; returns :func:`report_paths`. :class:`ReportError`
    (one line) when ``out`` is not a ``.md`` name, its folder cannot be written or is a run folder (a report is
    not part of a run), or one of the files it would write exists and is not a report of ours."""
    paths = report_paths(out)
    out = paths["report"]
    problem = unwritable(out.parent)
    if problem:
        raise ReportError(f"--out {out}: {problem}; pick another --out")
    folder = out.parent.resolve()
    for d in (folder, *folder.parents):
        why = _run_folder(d, strict=d == folder)
        if why:
            where = f"{folder} is a run folder" if d == folder else f"{folder} is inside the run folder {d}"
            raise ReportError(f"--out {out}: {where} ({why}); a report is not part of a run and nothing was written: "
                              f"pick an --out outside it (e.g. {d.parent / (d.name + '-report.md')})")
    for kind, path in paths.items():
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise ReportError(f"--out {out}: {path} is a folder, not a file; nothing was written: pick another --out")
        if path.exists() and not _ours(kind, path):
            raise ReportError(f"--out {out}: {path} exists and is not a report written by cnn_jax compare; nothing "
                              "was written (it is not replaced): pick another --out, or move that file")
    return paths


def report_data(runs: list[Run]) -> dict[str, Any]:
    """What ``report.json`` holds: per run its figures and overfitting verdict, the accuracy margin, the
    conclusion (the prose renders these)."""
    keys = ("dataset", "tfds_name", "data_source", "model", "epochs", "train_accuracy", "train_eval_accuracy",
            "val_accuracy", "test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "images_per_s")
    return {"kind": REPORT_KIND,
            "runs": {r.name: {"path": str(r.path), **{k: r.summary[k] for k in keys},
                              "overfitting": r.summary["overfitting"]} for r in runs},
            "accuracy": margin(runs), "overfitting_comparison": overfitting_comparison(runs),
            "conclusion": conclusion(runs)}


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike = "report.md") -> dict[str, Any]:
    """Read the runs, write the report (``<stem>.md``), its data (``<stem>.json``) and its figure
    (``<stem>.png``), each atomically; ``out`` must end in ``.md`` (or have no suffix). Writes nothing into a run
    folder and replaces no file that is not a report of ours (:func:`check_out`). A run on a stand-in is named by
    its label (``results.json``'s ``data_source``). Returns ``{"report", "data", "figure", "runs", "conclusion",
    "text"}``."""
    if len(run_dirs) < 2:
        raise ReportError(f"need at least two run folders to compare, got {len(run_dirs)}")
    resolved = [Path(p).resolve() for p in run_dirs]
    dupes = {str(p) for p in resolved if resolved.count(p) > 1}
    if dupes:
        raise ReportError(f"the same run folder is given twice: {', '.join(sorted(dupes))}")
    paths = check_out(out)
    runs = [read_run(p) for p in run_dirs]
    for run, name in zip(runs, _names([r.path for r in runs]), strict=True):
        run.name = name
        run.summary = summarize(run)
    from cnn_jax import plots

    out, figure = paths["report"], paths["figure"]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plots.plot_comparison({r.name: r.history for r in runs}, figure,
                              "validation accuracy, validation loss and overfitting gap per epoch", metadata=PNG_MARK)
        text = render(runs, figure.name)
        write_text(out, text)
        write_json(paths["data"], report_data(runs))
    except OSError as e:
        raise ReportError(f"--out {out}: cannot write ({e.strerror or e})") from e
    return {"report": out, "data": paths["data"], "figure": figure, "runs": runs, "conclusion": conclusion(runs),
            "text": text}


def main(argv: list[str] | None = None, prog: str = "experiments/compare.py") -> int:
    from cnn_jax.cli import ArgumentParser  # the one-line errors of every command

    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run folders (with results.json)")
    p.add_argument("--out", default="report.md", help="the Markdown report, a name ending in .md; its data and "
                                                      "figure go beside it as .json and .png (default: report.md). "
                                                      "Not inside a run folder; files that are not an earlier "
                                                      "report of ours are never replaced")
    args = p.parse_args(argv)
    try:
        result = write_report(args.runs, args.out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['report']}, {result['data']} and {result['figure']}")
    print(" ".join(result["conclusion"]))
    return 0
