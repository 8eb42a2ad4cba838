"""
The paper's claims, one line each, with the replication's numbers, the test that decides each and its
verdict, from aggregate.py's report (a markdown table for replication/README.md):

  python -m replication.claims --aggregate replication/results/three-arms/aggregate.json

One declared family. Every test this table reports is a row of FAMILY measured in the aggregate (a row
whose arms or numbers the aggregate lacks is listed as not measured and left out of the family), and the
family's p-values are Holm-adjusted together: a verdict is drawn only where the adjusted p is below 0.05.
aggregate.py reports differences and intervals, never tests. The unit of every test is the seed: the paired
t-test of the per-seed differences (df = seeds - 1), the seed-paired regression for the dissociation, the
Pitman-Morgan test for the seed spread. Beside each "not detected" stands the smallest true difference the
test finds with 80% power at the family's strictest level (0.05 / m): a reader sees what the seeds could not
have seen.

Each row names the metric, shots and decoding on both sides: the paper's cells are LLaDA-8B (4-shot NL-RX,
gen 512 / block 128, 3 seeds), ours a 9M model (0-shot, gen 64 / block 32, the exact sampler). Where the
quantities do not compare, the row says so instead of a ratio. The paper is quoted from "DLLM-JEPA: Joint
Embedding Predictive Architectures for Masked Diffusion Language Models" (arXiv:2606.00091).
"""

import math
import statistics
import sys
from typing import NamedTuple

from configurator import configure, setting_keys
from harness.errors import ConfigError, read_json_object
from harness.runtime import run_main
from replication import stats

aggregate = "replication/results/three-arms/aggregate.json"
KEYS = setting_keys(globals())

ALPHA = 0.05
FT = "checkpoints/ft/"
TASK = "nontrivial/dfa"  # the replication's primary metric: DFA match on the non-trivial golds
OURS_TASK = "NL-RX-SYNTH non-trivial DFA match, 9M, 0-shot, gen 64 / block 32, exact sampler"
OURS_PROBE = "9M, 100 samples, 50% masked, the same masks for every model"
NAMES = {"jepa": "DLLM-JEPA", "baseline": "baseline", "control": "control"}


class Claim(NamedTuple):
    label: str  # the claim, as the table names it
    a: str  # the arm whose per-seed value is minuend
    b: str  # and subtrahend
    number: str  # aggregate.py's name of the number
    paper: str  # what the paper reports, with its model, metric, shots and decoding
    ours: str  # what the replication measures, likewise
    direction: int  # the paper's sign of a - b (+1, -1), 0 where it claims none or does not measure the number
    test: str = "paired t"  # "paired t", "dissociation" or "spread"


FAMILY = [
    Claim("task gain", "jepa", "baseline", TASK,
          "NL-RX-SYNTH functional match, LLaDA-8B, 4-shot, gen 512 / block 128: 45.93 +- 2.70 -> 48.52 +- 4.55 "
          "(Table 10, 3 seeds)", OURS_TASK, +1),
    Claim("forgetting lower (WikiText loss rise, nats)", "jepa", "baseline", FT + "forgetting",
          "WikiText-103 diffusion loss rise 43-58% lower, LLaDA-8B (Figure 2C)", "WikiText-103 validation, " + OURS_PROBE,
          -1),
    Claim("forgetting lower (KL(base || ft), WikiText)", "jepa", "baseline", FT + "texts/wikitext/kl_from_base",
          "not measured (the paper reports the loss rise)", "KL at the masked positions, " + OURS_PROBE, 0),
    Claim("more kept (calibrated retention, GSM8K test)", "jepa", "baseline",
          FT + "texts/gsm8k-test/retention_calibrated", "not measured",
          "(unigram - ft) / (unigram - base), temperature fitted on half the samples; GSM8K test (the base saw "
          "GSM8K train), " + OURS_PROBE, 0),
    Claim("more kept (calibrated retention, held-out code)", "jepa", "baseline",
          FT + "texts/torch-code/retention_calibrated", "not measured",
          "as above, on torch's nn/modules (Python not in the base's corpus)", 0),
    Claim("the prediction matters (forgetting, DLLM-JEPA vs shuffled-target control)", "jepa", "control",
          FT + "forgetting", "no control in the paper", "WikiText-103 validation, " + OURS_PROBE, 0),
    Claim("the extra term alone (forgetting, control vs baseline)", "control", "baseline", FT + "forgetting",
          "no control in the paper", "WikiText-103 validation, " + OURS_PROBE, 0),
    Claim("drift (mean over blocks)", "jepa", "baseline", FT + "drift/mean",
          "ratio DLLM-JEPA / baseline 1.3-3.6x on GSM8K (middle layers), 0.94x on NL-RX, LLaDA-8B (Section 5.1)",
          "1 - cos of mean-pooled hidden states, WikiText-103, " + OURS_PROBE, 0),
    Claim("drift-forgetting dissociation (forgetting at equal drift)", "jepa", "baseline", FT + "forgetting",
          "drift ~ forgetting per run: baselines r = +0.94, DLLM-JEPA r = +0.75 (n = 10 each), Fisher z = 1.42, "
          "p = 0.16 (Figure 4)", "forgetting ~ drift + arm with seed effects (per-seed differences)", -1,
          "dissociation"),
    Claim("no collapse (z_tH effective rank, uncentred)", "jepa", "baseline", FT + "collapse/z_tH/effective_rank",
          "effective rank of z 42-44, base 42-43, 'virtually identical to the baseline' (Section 3, A.7)",
          "the target view's pooled embeddings, WikiText-103, 100 samples", 0),
    Claim("no collapse (z_tH effective rank, centred)", "jepa", "baseline",
          FT + "collapse/z_tH/effective_rank_centred", "not reported (the paper does not say it centres)",
          "as above, the mean embedding removed first", 0),
    Claim("seed spread of the task score", "jepa", "baseline", TASK,
          "GSM8K: baseline +-8.9 pp, DLLM-JEPA +-3.9 pp (Section 4.2); NL-RX 2.70 -> 4.55 (Table 10): 'aggregate "
          "variance behavior ... is mixed'", OURS_TASK, 0, "spread"),
]

# the paper's drift cells, compared with the replication's ratio interval (a comparison, not a test)
PAPER_DRIFT = {"NL-RX (0.94x)": (0.94, 0.94), "GSM8K (1.3-3.6x)": (1.3, 3.6)}


def values(report, arm, name):
    """The arm's per-seed values of a number (seed order as aggregate.py was given), None if not measured."""
    found = report.get("arms", {}).get(arm, {}).get("numbers", {}).get(name)
    return None if found is None else found["values"]


def run_test(report, claim):
    """{'difference' (mean a - b, or the dissociation's gamma, or the sd ratio), 'p', 'se'-based 'mde', 'n',
    'ci'}: the claim's test on the per-seed values, None where an arm or number is not measured."""
    a, b = values(report, claim.a, claim.number), values(report, claim.b, claim.number)
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return None
    n = len(a)
    if claim.test == "spread":
        pm = stats.pitman_morgan(a, b)
        return {"difference": pm["ratio"], "p": pm["p"], "mde": None, "n": n, "ci": None}
    d = [x - y for x, y in zip(a, b)]
    if claim.test == "dissociation":
        da, db = values(report, claim.a, FT + "drift/mean"), values(report, claim.b, FT + "drift/mean")
        if da is None or db is None or n < 3:
            return None
        fit = stats.paired_regression([x - y for x, y in zip(da, db)], d)
        return {"difference": fit["gamma"], "p": fit["p"], "se": fit["se_gamma"], "df": fit["df"], "n": n,
                "beta": fit["beta"], "ci": t_interval(fit["gamma"], fit["se_gamma"], fit["df"])}
    t = stats.paired_t(d)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    return {"difference": t["mean"], "p": t["p"], "se": se, "df": n - 1, "n": n,
            "ci": t_interval(t["mean"], se, n - 1)}


def t_interval(mean, se, df):
    half = stats.t_quantile(1 - ALPHA / 2, df) * se
    return mean - half, mean + half


def verdict(claim, result, adjusted_p, mde):
    """What passes, in words: a direction only where the Holm-adjusted p is below ALPHA; otherwise 'not
    detected' with the smallest difference the test would have found."""
    if result["p"] is None:
        return "no test (no spread)"
    if adjusted_p >= ALPHA:
        return f"not detected (Holm p = {adjusted_p:.2f}; detectable: {mde})"
    if claim.test == "spread":
        higher = result["difference"] > 1
        return f"{NAMES[claim.a]} {'wider' if higher else 'tighter'} across seeds"
    said = f"{NAMES[claim.a]} {'higher' if result['difference'] > 0 else 'lower'}"
    if claim.direction:
        said += " (as the paper)" if (result["difference"] > 0) == (claim.direction > 0) else " (opposite to the paper)"
    return said


def claim_lines(report):
    """The table's rows, family first in FAMILY's order: [claim, the paper, the replication, result, test,
    verdict]; rows not measured say so."""
    measured = [(c, run_test(report, c)) for c in FAMILY]
    tested = [(c, r) for c, r in measured if r is not None and r["p"] is not None]
    adjusted = dict(zip((c.label for c, _ in tested), stats.holm([r["p"] for _, r in tested])))
    m = len(tested)
    rows = []
    for claim, result in measured:
        if result is None:
            rows.append([claim.label, claim.paper, claim.ours, "not measured in this aggregate", "-", "-"])
            continue
        mde = detectable(claim, result, m)
        rows.append([claim.label, claim.paper, claim.ours, describe(report, claim, result),
                     test_text(claim, result, adjusted.get(claim.label)),
                     verdict(claim, result, adjusted.get(claim.label, 1.0), mde)])
    return rows


def detectable(claim, result, m):
    """The difference the test finds with 80% power at ALPHA / m (Holm's strictest step), as text."""
    if "se" not in result or not result["se"]:
        return "-"
    return f"{stats.minimum_detectable_effect(0, 0, alpha=ALPHA / max(m, 1), df=result['df'], se=result['se']):.3g}"


def describe(report, claim, result):
    a_mean = statistics.fmean(values(report, claim.a, claim.number))
    b_mean = statistics.fmean(values(report, claim.b, claim.number))
    text = f"{NAMES[claim.a]} {a_mean:.4g} vs {NAMES[claim.b]} {b_mean:.4g}"
    if claim.test == "spread":
        ratio = result["difference"]
        return text + f"; sd ratio {'-' if ratio is None else f'{ratio:.2f}'}"
    what = "gamma (at equal drift)" if claim.test == "dissociation" else "mean diff"
    lo, hi = result["ci"]
    return text + f"; {what} {result['difference']:+.4g} [95% CI {lo:+.3g}, {hi:+.3g}]"


def test_text(claim, result, adjusted_p):
    name = {"paired t": f"paired t over {result['n']} seeds", "spread": "Pitman-Morgan (paired variances)",
            "dissociation": f"seed-paired regression, {result['n']} seeds"}[claim.test]
    if result["p"] is None:
        return name + ", no spread"
    return f"{name}, p = {result['p']:.3g}, Holm p = {adjusted_p:.3g}"


def notes(report):
    """Comparisons and descriptions under the table, none of them a test of the family."""
    lines = []
    a, b = values(report, "jepa", FT + "drift/mean"), values(report, "baseline", FT + "drift/mean")
    if a and b and len(a) == len(b) >= 2 and all(x > 0 for x in a + b):
        logs = [math.log(x / y) for x, y in zip(a, b)]
        mean, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
        lo, hi = (math.exp(x) for x in t_interval(mean, se, len(logs) - 1))
        for cell, (p_lo, p_hi) in PAPER_DRIFT.items():
            inside = "inside" if lo <= p_hi and p_lo <= hi else "outside"
            lines.append(f"- drift ratio DLLM-JEPA / baseline {math.exp(mean):.3f} (95% CI {lo:.3f}-{hi:.3f}, "
                         f"per-seed log ratios): the paper's {cell} is {inside} it")
    for pair, subsets in report.get("items", {}).items():
        found = subsets.get("nontrivial", {}).get("dfa")
        if not found or "per_seed" not in found:  # an aggregate written before items were kept per seed
            continue
        first, second = (NAMES.get(x, x) for x in pair.split("-"))
        per_seed = ", ".join(f"{s['a_only']}/{s['b_only']} (p {s['p']:.2f})" for s in found["per_seed"])
        interval = found.get("interval_95")
        lines.append(f"- item level, non-trivial DFA, {first} vs {second}: per seed, items only {first} / only "
                     f"{second} right (exact McNemar within the seed): {per_seed}"
                     + (f"; seed-then-item bootstrap 95% interval of the difference {interval[0]:+.3f} to "
                        f"{interval[1]:+.3f}" if interval else "") + " (descriptions, not tests of the method)")
    found = report.get("correlations", {})
    key = f"{FT}drift/mean ~ {FT}forgetting"
    if key in found.get("jepa", {}) and key in found.get("baseline", {}):
        rj, rb = found["jepa"][key], found["baseline"][key]
        if rj["r"] is not None and rb["r"] is not None and min(rj["n"], rb["n"]) >= 4:
            fz = stats.fisher_z(rb["r"], rb["n"], rj["r"], rj["n"])
            lines.append(f"- the paper's own dissociation test, for comparison only: baseline r = {rb['r']:+.2f}, "
                         f"DLLM-JEPA r = {rj['r']:+.2f}, Fisher z = {fz['z']:.2f}, p = {fz['p']:.2f}; it assumes "
                         "independent samples, and the arms here are paired by seed")
    return lines


def main(argv):
    configure(globals(), KEYS, argv)
    report = read_json_object(aggregate, "aggregate report")
    if "jepa" not in report.get("arms", {}) or "baseline" not in report.get("arms", {}):
        raise ConfigError(f"{aggregate} has no arms 'jepa' and 'baseline'; run replicate.sh aggregate first")
    rows = claim_lines(report)
    m = sum(1 for r in rows if r[4] not in ("-",) and "no spread" not in r[4])
    print(f"One family of {m} tests, Holm-adjusted together; 'detectable' is the difference each finds with 80% "
          f"power at {ALPHA} / {m}.\n")
    print("| claim | the paper | the replication | result | test | verdict |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    extra = notes(report)
    if extra:
        print("\nNot tests of the family:\n")
        print("\n".join(extra))


if __name__ == "__main__":
    run_main("replication/claims.py", main, sys.argv[1:], lambda: 0)
