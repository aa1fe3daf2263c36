"""The report's conclusion in words, computed from the runs' summaries: accuracy ranking and margin, each run's
overfitting verdict and which overfits more, the hardest classes, speed."""

from __future__ import annotations

from typing import Any

from cnn_jax.report.runs import Run
from cnn_jax.report.statistics import TIE_POINTS, margin, overfitting_comparison, pct

__all__ = ["conclusion", "verdict_words"]


def _pts(x: float) -> str:
    return f"{100 * x:.1f} point{'' if round(100 * x, 1) == 1 else 's'}"


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


def _accuracy_sentences(runs: list[Run]) -> list[str]:
    ranked = sorted(runs, key=lambda r: r.summary["test_accuracy"], reverse=True)
    top, second, last = ranked[0], ranked[1], ranked[-1]
    diff = top.summary["test_accuracy"] - second.summary["test_accuracy"]
    m = margin(runs)
    out = []
    if diff * 100 < TIE_POINTS:
        out.append(f"{top.name} and {second.name} are equally accurate on the test set "
                   f"({pct(top.summary['test_accuracy'])}% vs {pct(second.summary['test_accuracy'])}%, "
                   f"less than {TIE_POINTS} points apart).")
    else:
        out.append(f"{top.name} is the most accurate run: {pct(top.summary['test_accuracy'])}% test accuracy, "
                   f"{_pts(diff)} ahead of {second.name} ({pct(second.summary['test_accuracy'])}%).")
        if m["exceeds_noise"] is not None:
            n1, n2 = top.summary["num_test"], second.summary["num_test"]
            n = f"{n1:,}" if n1 == n2 else f"{n1:,} ({top.name}) and {n2:,} ({second.name})"
            out.append(f"With {n} test images that margin is " + (
                f"more than noise (two standard errors are {m['two_se_points']:.1f} points)." if m["exceeds_noise"]
                else f"within noise (two standard errors are {m['two_se_points']:.1f} points)."))
    if len(ranked) > 2:
        out.append(f"The least accurate is {last.name} with {pct(last.summary['test_accuracy'])}%, "
                   f"{_pts(top.summary['test_accuracy'] - last.summary['test_accuracy'])} behind {top.name}.")
    with_val = [r for r in runs if r.summary.get("best_val_accuracy") is not None]
    if len(with_val) == len(runs):
        best_val = max(runs, key=lambda r: r.summary["best_val_accuracy"])
        if best_val is not top and diff * 100 >= TIE_POINTS:
            out.append(f"Validation disagrees: {best_val.name} reached the highest validation accuracy "
                       f"({pct(best_val.summary['best_val_accuracy'])}%), not {top.name}.")
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
    accs = " / ".join(f"{pct(r.summary['per_class_accuracy'][hardest[0]], 1)}%" for r in runs)
    sentence = (f"The hardest class is {hardest[0]} (accuracy {accs} in {' / '.join(r.name for r in runs)}), "
                f"followed by {hardest[1]} ({pct(mean[hardest[1]], 1)}% on average)")
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
        out.append(f"The runs differ most on {c}: {best.name} gets {pct(max(diffs[c]), 1)}%, "
                   f"{worst.name} {pct(min(diffs[c]), 1)}%.")
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
