"""Bootstrap confidence intervals for the headline metrics, recorded beside each value.

API for benchmarks (one `Bootstrap` per test, from the `intervals` fixture or `Bootstrap(seed)`):

    ci = intervals                                          # Bootstrap(seed, resamples)
    record(test_accuracy=ci.mean(correct))                  # per-sample 0/1 (or real) values
    record(agreement=ci.proportion(agreeing, n))            # a count of n samples
    record(auc=ci.auc(scores, is_member))                   # members / non-members resampled apart
    record(gap=ci.difference(train_correct, test_correct))  # two independent samples
    record(drop=ci.mean(clean_correct - adv_correct))       # paired: one value per sample

Each call returns an `Estimate` (the value and its interval); `record` stores the value under the
metric's name and the interval in the row's `metrics["intervals"][name]` as
`{"low", "high", "level", "resamples", "n", "method"}` (`split_estimates`). The report and
`--securitynet-compare` read that block (`interval_of`).

Percentile bootstrap, vectorised with numpy: the resampled counts or indices of all resamples are
drawn at once (in chunks that bound memory), so 1,000 resamples of 10,000 samples take tens of
milliseconds. Seeded per (run seed, sample size, stream): one set of samples is resampled the same
way for every metric computed on it, and a rerun gives the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
INTERVALS = "intervals"
"""The key of a row's `metrics` that holds the intervals, by metric name."""
METHOD = "percentile bootstrap"
_CHUNK_ELEMENTS = 2_000_000  # resamples x samples per vectorised step (about 8 MB of int32)
_FEW_KINDS = 16


@dataclass(frozen=True)
class Estimate:
    """A metric's value with its bootstrap interval (`low`, `high` at `level`) over `resamples`."""

    value: float
    low: float
    high: float
    level: float = LEVEL
    resamples: int = DEFAULT_RESAMPLES
    n: int | list[int] = 0

    def __float__(self) -> float:
        return float(self.value)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def interval(self) -> dict[str, Any]:
        """The entry of `metrics["intervals"]`."""
        return {"low": self.low, "high": self.high, "level": self.level, "resamples": self.resamples,
                "n": self.n, "method": METHOD}


class Bootstrap:
    """Seeded, vectorised percentile-bootstrap intervals. `resamples=0` records values without intervals."""

    def __init__(self, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL):
        if resamples < 0:
            raise ValueError(f"resamples must be >= 0, got {resamples}")
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1, got {level}")
        self.seed, self.resamples, self.level = int(seed), int(resamples), float(level)

    # --- statistics ------------------------------------------------------------------------

    def mean(self, values: Any) -> Estimate:
        """The mean of per-sample values (accuracy from 0/1 correctness, a paired difference ...)."""
        x = _array(values, np.float64)
        _need(len(x), "mean")
        return self._estimate(float(x.mean()), self._means(x, 0) if self.resamples else None, len(x))

    def proportion(self, successes: float, n: int) -> Estimate:
        """A fraction of `n` samples given as a count (or the fraction times n, rounded): resampling
        n 0/1 values is drawing Binomial(n, successes/n), which needs no per-sample data."""
        n = int(n)
        _need(n, "proportion")
        k = int(round(float(successes)))
        if not 0 <= k <= n:
            raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
        stats = None
        if self.resamples:
            stats = self._rng(n, 3).binomial(n, k / n, size=self.resamples) / n
        return self._estimate(k / n, stats, n)

    def difference(self, a: Any, b: Any) -> Estimate:
        """mean(a) - mean(b) of two independent samples (train minus test accuracy)."""
        xa, xb = _array(a, np.float64), _array(b, np.float64)
        _need(min(len(xa), len(xb)), "difference")
        stats = self._means(xa, 1) - self._means(xb, 2) if self.resamples else None
        return self._estimate(float(xa.mean() - xb.mean()), stats, [len(xa), len(xb)])

    def balanced_accuracy(self, decisions: Any, is_member: Any) -> Estimate:
        """Mean of TPR and TNR of hard member decisions, members and non-members resampled apart."""
        d, m = _array(decisions, bool), _array(is_member, bool)
        pos, neg = d[m].astype(np.float64), (~d[~m]).astype(np.float64)
        _need(min(len(pos), len(neg)), "balanced accuracy")
        stats = (self._means(pos, 1) + self._means(neg, 2)) / 2 if self.resamples else None
        return self._estimate(float((pos.mean() + neg.mean()) / 2), stats, [len(pos), len(neg)])

    def roc(self, scores: Any, is_member: Any, fprs: Mapping[str, float] | None = None) -> dict[str, Estimate]:
        """`auc` and a TPR at each of `fprs` ({name: fpr}) of "member iff score >= t", from one set of
        resamples (members and non-members resampled apart, the threshold re-chosen in each).

        AUC counts ties half; the TPR at an FPR is the largest of one threshold whose FPR is at most
        it, not interpolated: both as `attacks.membership` computes them."""
        pos, neg_sorted, lo, hi = self._ranked(scores, is_member)
        n_pos, n_neg = len(pos), len(neg_sorted)
        fprs = dict(fprs or {})
        allowed = {name: math.floor((fpr + 1e-12) * n_neg) for name, fpr in fprs.items()}  # false positives
        pos_sorted = np.sort(pos)
        points = {"auc": float((hi + lo).sum() / 2 / (n_pos * n_neg))}  # lo: negatives below, hi - lo: tied
        for name, k in allowed.items():
            limit = neg_sorted[n_neg - 1 - k] if k < n_neg else -np.inf  # the threshold must exceed it
            points[name] = float(n_pos - np.searchsorted(pos_sorted, limit, side="right")) / n_pos
        stats: dict[str, list[np.ndarray]] = {name: [] for name in points}
        if self.resamples:
            width = n_pos + n_neg
            for drawn, counts in zip(self._indices(n_pos, 1, width), self._counts(n_neg, 2, width)):
                below = _cumulative(counts)  # [b, n_neg + 1]: resampled negatives among the lowest j
                drawn_lo = lo[drawn]  # per drawn member: negatives (of the original) below its score
                ties = np.take_along_axis(below, drawn_lo, 1) + np.take_along_axis(below, hi[drawn], 1)
                stats["auc"].append(ties.sum(axis=1) / (2 * n_pos * n_neg))
                # Rows of `below` lie in [0, n_neg]: shifted by (n_neg + 1) per row they form one sorted
                # array, so one searchsorted finds a position in every row.
                rows = np.arange(len(below))
                flat = (below[:, :n_neg] + (rows * (n_neg + 1))[:, None]).ravel()
                for name, k in allowed.items():
                    # The (k+1)-th highest resampled negative sits at the last sorted position with at
                    # least k + 1 resampled negatives at or above it (none when k >= n_neg); a member
                    # is above it when more original negatives lie below its score than that position.
                    last = np.searchsorted(flat, rows * (n_neg + 1) + (n_neg - k - 1), side="right") - rows * n_neg - 1
                    stats[name].append((drawn_lo > last[:, None]).mean(axis=1))
        return {name: self._estimate(points[name], np.concatenate(stats[name]) if self.resamples else None,
                                     [n_pos, n_neg]) for name in points}

    def auc(self, scores: Any, is_member: Any) -> Estimate:
        """ROC AUC of "member iff score >= t", ties counted half (`roc`)."""
        return self.roc(scores, is_member)["auc"]

    def tpr_at_fpr(self, scores: Any, is_member: Any, fpr: float) -> Estimate:
        """The largest TPR of one threshold whose FPR is at most `fpr`, not interpolated (`roc`)."""
        return self.roc(scores, is_member, {"tpr": fpr})["tpr"]

    # --- machinery -------------------------------------------------------------------------

    def _estimate(self, value: float, stats: np.ndarray | None, n: int | list[int]) -> Estimate:
        if stats is None:
            return Estimate(value, value, value, self.level, 0, n)
        alpha = (1 - self.level) / 2
        low, high = np.quantile(stats, [alpha, 1 - alpha])
        # The percentile interval of a skewed statistic can miss its own value by rounding: widen.
        return Estimate(value, float(min(low, value)), float(max(high, value)), self.level, self.resamples, n)

    def _means(self, x: np.ndarray, stream: int) -> np.ndarray:
        """`resamples` means of x resampled with replacement. Values of few kinds (0/1 correctness,
        a paired difference in -1/0/1) are resampled as counts per kind, Multinomial(n, shares): the
        same distribution in O(resamples x kinds) instead of O(resamples x n)."""
        kinds, counts = np.unique(x, return_counts=True)
        rng = self._rng(len(x), stream)
        if len(kinds) <= _FEW_KINDS:
            return rng.multinomial(len(x), counts / len(x), size=self.resamples) @ kinds / len(x)
        return np.concatenate([x[idx].mean(axis=1) for idx in self._indices(len(x), stream)])

    def _rng(self, n: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, n, stream])

    def _chunks(self, width: int) -> list[int]:
        step = max(1, _CHUNK_ELEMENTS // max(width, 1))
        return [min(step, self.resamples - start) for start in range(0, self.resamples, step)]

    def _indices(self, n: int, stream: int, width: int = 0):
        """Resampled indices, [b, n] per chunk, `resamples` rows in all (chunks sized for `width`
        samples, so two groups resampled side by side get chunks of one size)."""
        rng = self._rng(n, stream)
        for b in self._chunks(max(n, width)):
            yield rng.integers(0, n, size=(b, n), dtype=np.int32)

    def _counts(self, n: int, stream: int, width: int = 0):
        """How often each sample is drawn, [b, n] per chunk (the same resamples as `_indices`)."""
        for idx in self._indices(n, stream, width):
            b = len(idx)
            flat = idx + (np.arange(b) * n)[:, None]
            yield np.bincount(flat.ravel(), minlength=b * n).reshape(b, n)

    @staticmethod
    def _ranked(scores: Any, is_member: Any):
        s, m = _array(scores, np.float64), _array(is_member, bool)
        if s.shape != m.shape:
            raise ValueError("scores and is_member must have the same number of elements")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        pos, neg_sorted = s[m], np.sort(s[~m])
        _need(min(len(pos), len(neg_sorted)), "ROC metrics (members and non-members)")
        return (pos, neg_sorted, np.searchsorted(neg_sorted, pos, side="left"),
                np.searchsorted(neg_sorted, pos, side="right"))


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Row-wise cumulative sums with a leading 0: out[:, j] = counts[:, :j].sum(1)."""
    out = np.zeros((counts.shape[0], counts.shape[1] + 1), dtype=np.int32)
    np.cumsum(counts, axis=1, out=out[:, 1:])
    return out


def _array(values: Any, dtype) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1).astype(dtype, copy=False)


def _need(n: int, what: str) -> None:
    if n < 1:
        raise ValueError(f"a bootstrap interval of a {what} needs at least one sample")


# --- rows ------------------------------------------------------------------------------------

def split_estimates(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`record`'s keyword values -> (plain values, intervals by name): an `Estimate` gives its value,
    and its interval when it has one."""
    plain_values, intervals = {}, {}
    for name, value in values.items():
        if isinstance(value, Estimate):
            plain_values[name] = value.value
            if value.resamples:
                intervals[name] = value.interval()
        else:
            plain_values[name] = value
    return plain_values, intervals


def interval_of(metrics: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    """(low, high) of a recorded metric's interval, or None when the row has none for it."""
    block = metrics.get(INTERVALS) if isinstance(metrics, Mapping) else None
    entry = block.get(name) if isinstance(block, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    low, high = entry.get("low"), entry.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        return None
    return float(low), float(high)
