"""
The paper's claims, one line each, with the replication's numbers, the test that decides each and its
verdict, from aggregate.py's report (a markdown table for replication/README.md):

  python -m replication.claims --aggregate replication/results/aggregate.json

Verdicts say only what passes at 0.05: 'as the paper' (the test passes in the paper's direction),
'opposite' (it passes the other way), 'not detected' (it does not pass; the p is given). The paper's
numbers are quoted from "DLLM-JEPA: Joint Embedding Predictive Architectures for Masked Diffusion Language
Models" (arXiv:2606.00091); its NL-RX cells are LLaDA-8B, 4-shot, 3 seeds, where ours is a 9M model, 0-shot,
5 seeds.
"""

import statistics
import sys

from configurator import configure, setting_keys
from harness.errors import ConfigError, read_json_object
from harness.runtime import run_main
from replication import stats

aggregate = "replication/results/aggregate.json"
pair = "jepa-baseline"
KEYS = setting_keys(globals())

FT = "checkpoints/ft/"
TASK = "nontrivial/dfa"  # the replication's primary metric: DFA match on the non-trivial golds
PAPER = {
    "gain": "NL-RX func. match 45.93 +- 2.70 -> 48.52 +- 4.55 (Table 10, 3 seeds); 47.50 -> 58.20 best (lambda, k) "
            "(Table 2)",
    "spread": "GSM8K: baseline +-8.9 pp, DLLM-JEPA +-3.9 pp (Section 4.2); NL-RX 2.70 -> 4.55 (Table 10): "
              "'aggregate variance behavior ... is mixed'",
    "drift": "DLLM-JEPA / baseline drift 1.3-3.6x on GSM8K, in the middle layers; 0.94x on NL-RX (Section 5.1)",
    "forgetting": "WikiText forgetting reduced by 43-58% on every task measured (Figure 2C)",
    "dissociation": "drift ~ forgetting per run: baselines r = +0.94, DLLM-JEPA r = +0.75 (n = 10 each), Fisher "
                    "z = 1.42, p = 0.16 (Figure 4)",
    "collapse": "effective rank of z 42-44, base 42-43, 'virtually identical to the baseline' (Section 3, A.7)",
}


def verdict(p, difference, paper_sign):
    if p is None:
        return "no test (no spread)"
    if p >= 0.05:
        return f"not detected (p = {p:.2f})"
    return "as the paper" if (difference > 0) == (paper_sign > 0) else "opposite"


def values(report, arm, name):
    found = report["arms"][arm]["numbers"].get(name)
    if found is None:
        raise ConfigError(f"{aggregate}: arm {arm} has no number {name!r}; run replicate.sh arms and aggregate first")
    return found["values"]


def paired_line(report, name, label, paper, sign, scale=1.0, unit=""):
    """A claim decided by the per-seed paired t-test of jepa - baseline on one number."""
    d = report["pairs"][pair][name]
    a, b = (statistics.fmean(values(report, arm, name)) for arm in pair.split("-"))
    p = d["t_test"]["p"] if "t_test" in d else None
    text = f"{a * scale:.3f}{unit} vs {b * scale:.3f}{unit} (mean diff {d['mean'] * scale:+.3f})"
    return [label, paper, text, f"paired t over {len(d['differences'])} seeds, p = {p:.3f}" if p is not None else "-",
            verdict(p, d["mean"], sign)]


def claim_lines(report):
    jepa, base = pair.split("-")
    rows = [paired_line(report, TASK, "task gain (DFA, non-trivial golds)", PAPER["gain"], +1)]
    items = report.get("items", {}).get(pair, {}).get("nontrivial", {}).get("dfa")
    if items:
        rows.append(["task gain, item level", PAPER["gain"], f"{items['a_only']} items only DLLM-JEPA right, "
                     f"{items['b_only']} only the baseline", f"McNemar pooled over seeds, p = {items['p']:.3f}",
                     verdict(items["p"], items["a_only"] - items["b_only"], +1)])
    pm = stats.pitman_morgan(values(report, jepa, TASK), values(report, base, TASK))
    ratio = "-" if pm["ratio"] is None else f"{pm['ratio']:.2f}"
    rows.append(["tighter seed spread", PAPER["spread"], f"sd ratio DLLM-JEPA / baseline {ratio}",
                 "Pitman-Morgan (paired variances), p = " + ("-" if pm["p"] is None else f"{pm['p']:.3f}"),
                 verdict(pm["p"], -(pm["r"] or 0.0), +1)])
    for region in ("mean", "early", "middle", "late"):
        rows.append(paired_line(report, f"{FT}drift/{region}", f"drift larger for DLLM-JEPA ({region})",
                                PAPER["drift"] if region == "mean" else "", +1))
    rows.append(paired_line(report, f"{FT}forgetting", "forgetting lower for DLLM-JEPA (nats)", PAPER["forgetting"],
                            -1))
    found = report.get("correlations", {})
    key = f"{FT}drift/mean ~ {FT}forgetting"
    if key in found.get(jepa, {}) and key in found.get(base, {}):
        rj, rb = found[jepa][key], found[base][key]
        if rj["r"] is not None and rb["r"] is not None:
            found_rs = f"baseline r = {rb['r']:+.2f} (p {rb['p']:.2f}), DLLM-JEPA r = {rj['r']:+.2f} (p {rj['p']:.2f})"
            if min(rj["n"], rb["n"]) < 4:  # a correlation has a p from 3 seeds, the difference of two from 4
                test, said = f"Fisher's z needs 4 seeds per arm (has {min(rj['n'], rb['n'])})", "no test yet"
            else:
                fz = stats.fisher_z(rb["r"], rb["n"], rj["r"], rj["n"])
                test, said = f"Fisher z = {fz['z']:.2f}, p = {fz['p']:.3f}", verdict(fz["p"], fz["z"], +1)
            rows.append(["drift-forgetting dissociation", PAPER["dissociation"], found_rs, test, said])
    for view in ("z_tL", "z_tH"):
        name = f"{FT}collapse/{view}/effective_rank"
        line = paired_line(report, name, f"no collapse ({view} effective rank)", PAPER["collapse"] if view == "z_tL"
                           else "", +1)
        base_rank = statistics.fmean(values(report, jepa, f"checkpoints/base/collapse/{view}/effective_rank"))
        line[2] += f"; base {base_rank:.2f}"
        d = report["pairs"][pair][name]  # the paper's claim is the absence of a difference
        p = d["t_test"]["p"] if "t_test" in d else None
        line[4] = "no test (no spread)" if p is None else f"no difference detected (p = {p:.2f})" if p >= 0.05 \
            else f"DLLM-JEPA {'higher' if d['mean'] > 0 else 'lower'}"
        rows.append(line)
    return rows


def main(argv):
    configure(globals(), KEYS, argv)
    report = read_json_object(aggregate, "aggregate report")
    if pair not in report.get("pairs", {}):
        raise ConfigError(f"{aggregate} has no pair {pair!r}; run replicate.sh aggregate first")
    print("| claim | the paper | the replication | test | verdict |")
    print("|---|---|---|---|---|")
    for row in claim_lines(report):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    run_main("replication/claims.py", main, sys.argv[1:], lambda: 0)
