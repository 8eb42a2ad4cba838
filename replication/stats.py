"""
The tests the replication reports a difference between two arms with: exact, small, and free of
any dependency past the standard library, so that a reader can check each against a textbook.

  per-seed paired differences d_1..d_n  --paired_t-->  mean, t, df, two-sided p   (Student, A&S 26.7.3-4)
                                        --sign_test--> two-sided exact binomial p  (ties dropped)
                                        --bootstrap--> percentile interval of the mean difference
  paired values of two numbers, per seed --pearson-->   r and the p of r = 0 (t with n - 2 df)
  item-level outcomes of two arms, 0/1  --mcnemar-->   discordant counts, two-sided exact binomial p (one seed)
                                        --cluster_bootstrap--> interval of the mean difference, seeds then items
  per-seed differences of two numbers   --paired_regression--> dy = gamma + beta dx: gamma's t-test (n - 2 df)
  a family of p-values                  --holm-->         Holm-Bonferroni adjusted p-values
  sd of the differences, n, alpha       --minimum_detectable_effect--> the mean difference found with 80% power

Seeds are the unit of a claim about the method: two runs of one arm differ by seed more than by item
sampling, so the (seed, item) pairs of several seeds are not independent and McNemar pooled over seeds is
not a test of the method; it is kept per seed, as a description, and the item-level interval resamples
seeds first.

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


def t_quantile(q, df):
    """The t such that P(T <= t) = q for Student's t with integer df (bisection on t_two_sided_p)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while 1 - t_two_sided_p(hi, df) / 2 < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 - t_two_sided_p(mid, df) / 2 < q else (lo, mid)
    return (lo + hi) / 2


def minimum_detectable_effect(sd, n, alpha=0.05, power=0.8, df=None, se=None):
    """The smallest true mean difference a two-sided t-test at `alpha` detects with probability `power`:
    (t_{1-alpha/2, df} + t_{power, df}) x se, with se = sd / sqrt(n) and df = n - 1 unless given (the usual
    shifted-t approximation of the noncentral t; tested against simulation to a few percent)."""
    df = n - 1 if df is None else df
    se = sd / math.sqrt(n) if se is None else se
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest p times (m - k + 1), made
    non-decreasing in that order and capped at 1. Rejecting where adjusted p < alpha keeps the family-wise
    error rate at alpha for any dependence between the tests."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_regression(dx, dy):
    """{'gamma', 'beta', 'se_gamma', 't', 'df', 'p'}: least squares dy = gamma + beta dx over the per-seed
    differences of two arms (arm B subtracted from arm A within each seed). It is the model
    y = seed effect + beta x + gamma [arm A] with seed effects and two runs per seed, so gamma is the
    arms' difference in y at equal x and respects the pairing; its t-test has n - 2 df."""
    n = len(dx)
    if n != len(dy) or n < 3:
        raise ValueError(f"a regression with intercept and slope needs at least three pairs, got {n}")
    mx, my = sum(dx) / n, sum(dy) / n
    sxx = sum((x - mx) ** 2 for x in dx)
    if sxx == 0:
        raise ValueError("dx has no spread: the slope is undefined")
    beta = sum((x - mx) * (y - my) for x, y in zip(dx, dy)) / sxx
    gamma = my - beta * mx
    rss = sum((y - gamma - beta * x) ** 2 for x, y in zip(dx, dy))
    se = math.sqrt(rss / (n - 2) * (1 / n + mx * mx / sxx))
    t = gamma / se if se else (0.0 if gamma == 0 else math.copysign(math.inf, gamma))
    return {"gamma": gamma, "beta": beta, "se_gamma": se, "t": t, "df": n - 2,
            "p": 1.0 if t == 0 else t_two_sided_p(t, n - 2)}


def cluster_bootstrap(per_seed_a, per_seed_b, level=0.95, resamples=2000, seed=0):
    """(low, high): percentile interval of the mean paired difference a - b of 0/1 item outcomes, resampling
    seeds, then items within each drawn seed (a two-stage bootstrap: seeds and items both vary). per_seed_a
    and per_seed_b list, per seed, the outcomes of the same items in the same order."""
    rng = random.Random(seed)
    diffs = [[x - y for x, y in zip(a, b)] for a, b in zip(per_seed_a, per_seed_b)]
    means = []
    for _ in range(resamples):
        total = count = 0
        for _ in diffs:
            d = rng.choice(diffs)
            total += sum(rng.choice(d) for _ in d)
            count += len(d)
        means.append(total / count)
    means.sort()
    return means[int((1 - level) / 2 * resamples)], means[min(resamples - 1, int((1 + level) / 2 * resamples))]
