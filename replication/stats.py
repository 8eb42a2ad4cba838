"""
The tests the replication reports a difference between two arms with (issue 22): exact, small, and free of
any dependency past the standard library, so that a reader can check each against a textbook.

  per-seed paired differences d_1..d_n  --paired_t-->  mean, t, df, two-sided p   (Student, A&S 26.7.3-4)
                                        --sign_test--> two-sided exact binomial p  (ties dropped)
                                        --bootstrap--> percentile interval of the mean difference
  paired values of two numbers, per seed --pearson-->   r and the p of r = 0 (t with n - 2 df)
  item-level outcomes of two arms, 0/1  --mcnemar-->   discordant counts, two-sided exact binomial p

Why these: with 5 seeds a sign test cannot go below p = 2/32 = 0.0625, so a difference that passes at 0.05
needs the t-test's assumption (normal differences) or more items (McNemar pools the items of every seed).
The t distribution's CDF is computed in closed form for integer degrees of freedom (Abramowitz & Stegun,
Handbook of Mathematical Functions, 26.7.3 and 26.7.4), which is every case here (df = seeds - 1).
"""

import math
import random


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with integer df >= 1 (A&S 26.7.3 for odd df, 26.7.4 for even)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # A(t|df) = 2/pi (theta + sin(theta) (cos + 2/3 cos^3 + ... + (2.4...(df-3))/(1.3...(df-2)) cos^(df-2)))
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        inside = (2 / math.pi) * (theta + s * total)
    else:  # A(t|df) = sin(theta) (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ... + (1.3...(df-3))/(2.4...(df-2)) cos^(df-2))
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        inside = s * total
    return min(1.0, max(0.0, 1.0 - inside))


def paired_t(diffs):
    """{'mean', 't', 'df', 'p'}: the paired t-test of H0 'mean difference 0' on per-seed differences.
    Identical differences (zero spread) give t = +-inf and p = 0, or t = 0 and p = 1 when all are 0."""
    n = len(diffs)
    if n < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return {"mean": mean, "t": t, "df": n - 1, "p": 1.0 if t == 0 else t_two_sided_p(t, n - 1)}


def pearson(xs, ys):
    """{'r', 'n', 'p'}: Pearson's correlation and the two-sided p of H0 'r = 0' (t = r sqrt((n-2)/(1-r^2)),
    df n - 2). Needs three pairs; a constant side gives r None."""
    n = len(xs)
    if n != len(ys) or n < 3:
        raise ValueError(f"a correlation needs at least three pairs of equal length, got {n} and {len(ys)}")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return {"r": None, "n": n, "p": None}
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    t = math.copysign(math.inf, r) if abs(r) == 1 else r * math.sqrt((n - 2) / (1 - r * r))
    return {"r": r, "n": n, "p": t_two_sided_p(t, n - 2)}


def fisher_z(r1, n1, r2, n2):
    """{'z', 'p'}: Fisher's r-to-z test that two independent correlations are equal (the paper's test of
    its Figure 4: z = (atanh r1 - atanh r2) / sqrt(1/(n1-3) + 1/(n2-3)), two-sided normal p)."""
    if min(n1, n2) < 4:
        raise ValueError("Fisher's test needs at least four pairs per correlation")
    clip = lambda r: max(-0.999999, min(0.999999, r))  # noqa: E731 (atanh(+-1) is infinite)
    z = (math.atanh(clip(r1)) - math.atanh(clip(r2))) / math.sqrt(1 / (n1 - 3) + 1 / (n2 - 3))
    return {"z": z, "p": math.erfc(abs(z) / math.sqrt(2))}


def pitman_morgan(a, b):
    """{'ratio', 'r', 'p'}: the Pitman-Morgan test that two paired samples (the arms' per-seed scores) have
    equal variances: var(a) = var(b) exactly when a + b and a - b are uncorrelated. ratio: sd(a) / sd(b)."""
    sums, diffs = [x + y for x, y in zip(a, b)], [x - y for x, y in zip(a, b)]
    spread = lambda v: math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v))  # noqa: E731
    corr = pearson(sums, diffs)
    return {"ratio": spread(a) / spread(b) if spread(b) else None, "r": corr["r"], "p": corr["p"]}


def binomial_two_sided_p(k, n):
    """Exact two-sided p of k successes in n fair trials: twice the smaller tail, capped at 1."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def sign_test(diffs):
    """{'positive', 'negative', 'p'}: the exact sign test (zero differences dropped)."""
    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"positive": pos, "negative": neg, "p": binomial_two_sided_p(pos, pos + neg)}


def mcnemar(a, b):
    """{'a_only', 'b_only', 'p'}: the exact McNemar test on paired 0/1 outcomes of two arms on the same items
    (pooled over seeds by listing every (seed, item) pair once)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths: {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p": binomial_two_sided_p(a_only, a_only + b_only)}


def bootstrap_interval(diffs, level=0.95, resamples=10_000, seed=0):
    """(low, high): the percentile bootstrap interval of the mean difference (resampling the pairs), drawn
    from a seeded generator so the same differences always give the same interval."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi
