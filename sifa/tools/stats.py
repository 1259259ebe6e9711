"""Small-sample statistics of the ablation study (docs/reproduction.md), exact and without SciPy:
Student's t distribution for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), the 95 %
confidence interval of a mean, the paired t-test, the exact Wilcoxon signed-rank test and the sign test."""
from __future__ import annotations

import itertools
import math
import statistics
from typing import Dict, Sequence, Tuple


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` (a positive integer) degrees of freedom, exact (A&S 26.7.3-4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/π)(θ + sinθ (cosθ + 2/3 cos³θ + ... ))
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):  # terms cos^(2k-1): coefficients 1, 2/3, 2·4/(3·5), ...
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        inside = (2 / math.pi) * (theta + s * total) if df > 1 else 2 * theta / math.pi
    else:  # even: sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...)
        total, term = 0.0, 1.0
        for k in range(df // 2):
            total += term
            term *= c * c * (2 * k + 1) / (2 * k + 2)
        inside = s * total
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside  # inside = P(|T| ≤ |t|)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """(mean, half-width of its ``level`` confidence interval) from the t distribution over the values;
    the half-width is NaN for a single value."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, t_quantile(0.5 + level / 2, len(values) - 1) * sem


def paired_t(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Paired t-test of a - b (pairs by position): mean difference, its 95 % CI half-width, t, df and the
    two-sided p-value. Identical pairs give t = 0, p = 1; a constant non-zero difference t = ±inf, p = 0."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_t needs two equally long samples of ≥ 2 values, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    mean, df = statistics.mean(d), len(d) - 1
    sd = statistics.stdev(d)
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(len(d)))
    p = 2 * (1 - t_cdf(abs(t), df))
    return {"mean_diff": mean, "ci95": t_quantile(0.975, df) * sd / math.sqrt(len(d)), "t": t, "df": df,
            "p": min(1.0, p)}


def _ranks(values: Sequence[float]) -> list:
    """Ranks 1..n of ``values``, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Exact two-sided Wilcoxon signed-rank test of a - b: zero differences dropped, ties given mean ranks,
    the null distribution enumerated over all 2^n signs. W+ = sum of the ranks of positive differences;
    p = P(|W+ - n(n+1)/4| ≥ observed) under the null (1 when no difference is non-zero)."""
    d = [x - y for x, y in zip(a, b) if x != y]
    n = len(d)
    if n == 0:
        return {"w_plus": 0.0, "n": 0, "p": 1.0}
    if n > 20:
        raise ValueError(f"the exact enumeration takes at most 20 non-zero differences, got {n}")
    ranks = _ranks([abs(x) for x in d])
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    centre = sum(ranks) / 2
    observed = abs(w_plus - centre)
    extreme = sum(1 for signs in itertools.product((0, 1), repeat=n)
                  if abs(sum(r for r, s in zip(ranks, signs) if s) - centre) >= observed - 1e-9)
    return {"w_plus": w_plus, "n": n, "p": extreme / 2 ** n}


def sign_test(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Exact two-sided sign test of a - b (ties dropped): wins of a, losses, p = P(min ≤ observed min)·2, ≤ 1."""
    wins = sum(1 for x, y in zip(a, b) if x > y)
    losses = sum(1 for x, y in zip(a, b) if x < y)
    n = wins + losses
    if n == 0:
        return {"wins": 0, "losses": 0, "p": 1.0}
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return {"wins": wins, "losses": losses, "p": min(1.0, 2 * tail)}
