"""The comparison's statistics: the one noise rule (binomial standard errors), the overfitting verdict of a run's
history, which of two runs overfits more, and the test-accuracy margin."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cnn_jax.report.runs import Run

__all__ = ["TIE_POINTS", "NOISE_SE", "TREND_POINTS", "VAL_LOSS_RISE", "beyond_noise", "subset_sizes", "overfitting",
           "overfitting_comparison", "margin", "gap", "standard_error", "pct"]


#: Differences below this many accuracy points (percent) count as a tie.
TIE_POINTS = 0.1
#: A difference of accuracies (a train-eval - validation gap, two runs' gaps, two test accuracies) is beyond the
#: noise when it exceeds this many of its standard errors (binomial, from the sizes of the sets measured).
NOISE_SE = 2.0
#: Growth of that gap over the second half of training (points per epoch) that counts as widening.
TREND_POINTS = 0.1
#: Relative rise of the validation loss above its minimum that counts as "rising again".
VAL_LOSS_RISE = 0.01


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals (``n/a`` for None or NaN)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def gap(h: dict[str, Any]) -> float | None:
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


def standard_error(p: float, n: int | None) -> float | None:
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
    se_te, se_val = standard_error(h["train_eval_accuracy"], sizes[0]), standard_error(h["val_accuracy"], sizes[1])
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
    ev = [h for h in history if gap(h) is not None]
    if not ev:
        return {"overfits": "unclear", "reasons": ["no train-eval figures: the run predates them, or has no "
                                                   "validation set"]}
    last = ev[-1]
    se = _gap_se(last, sizes)
    out: dict[str, Any] = {"gap_points": 100 * gap(last), "gap_se_points": se,
                           "gap_z": None if not se else 100 * gap(last) / se,
                           "loss_gap": last["val_loss"] - last["train_eval_loss"],
                           "train_eval_size": sizes[0], "val_size": sizes[1]}
    half = ev[len(ev) // 2:] if len(ev) >= 4 else []
    out["trend_points_per_epoch"] = float(np.polyfit([h["epoch"] for h in half], [100 * gap(h) for h in half],
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
                f"final train-eval accuracy {pct(last['train_eval_accuracy'])}% vs validation "
                f"{pct(last['val_accuracy'])}%{sizes_text}: gap {out['gap_points']:+.1f} points{noise}; loss gap "
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


def margin(runs: list[Run]) -> dict[str, Any]:
    """The most accurate run on the test set, its margin over the next and whether that exceeds the noise
    (two standard errors of the difference of two proportions)."""
    top, second = sorted(runs, key=lambda r: r.summary["test_accuracy"], reverse=True)[:2]
    p1, p2 = top.summary["test_accuracy"], second.summary["test_accuracy"]
    n1, n2 = top.summary["num_test"], second.summary["num_test"]
    se = 100 * math.hypot(standard_error(p1, n1), standard_error(p2, n2)) if n1 and n2 else None
    return {"most_accurate": top.name, "runner_up": second.name, "margin_points": 100 * (p1 - p2),
            "two_se_points": None if se is None else NOISE_SE * se,
            "exceeds_noise": beyond_noise(100 * (p1 - p2), se)}
