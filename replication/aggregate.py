"""
Results over seeds: per arm, the mean and the population standard deviation of every number in the
runs' result files (the paper's Tables 3, 4, 10 and 12 report mean +- population std over three seeds),
and the per-seed paired differences between two arms with their mean, sd and 95% t-interval. Descriptions,
not tests: the tests of the claims are one declared family in replication/claims.py, Holm-adjusted together;
a p-value beside each of the hundred numbers here would be a family nobody declared.

  python -m replication.aggregate --arms "jepa:j42.json,j123.json,j777.json;baseline:b42.json,b123.json,b777.json" \
      --pair jepa/baseline --out aggregate.json

A run is one result file, or several joined by '+' (an evaluate.py summary and a probe.json, say); its
numbers are the numeric leaves of the JSON, named by their path ('exact', 'checkpoints/ft/drift/mean'),
the 'config' subtrees left out. Runs pair up by position: list the arms' runs in the same seed order.
Only numbers every run of an arm has are aggregated; a number one run lacks is named, not guessed.

Item level (--items, the runs' per-item evaluate.py records, .jsonl or .jsonl.gz, listed as --arms lists its
runs): for each pair and each 0/1 metric, McNemar's exact test within each seed and the seed-then-item
bootstrap interval of the difference (replication/items.py), on all items, on the non-trivial golds
(neither the empty language nor every string), and on the items of --leaked (a JSON file's "indices",
replication/leaks.py) apart; the first two leave those out.
"""

import fnmatch
import math
import statistics
import sys

from configurator import configure, setting_keys
from harness.errors import ConfigError, InputError, parse_json, read_json_object, read_text
from harness.outputs import write_json
from replication import stats
from replication.items import item_tests, read_items
from harness.runtime import run_main

# -----------------------------------------------------------------------------
# settings
arms = ""  # "name:run,run,...;name:run,..." where a run is file[+file...]
pair = ""  # "a/b": per-seed differences a - b (comma-separated for several pairs)
out = ""  # write the aggregate here as JSON (empty: print only)
items = ""  # "name:items.jsonl.gz,...;name:..." per-item records, in the runs' order (empty: no item tests)
leaked = ""  # a JSON file whose "indices" are evaluation items also trained on, reported apart
# numbers that describe the run, not its result: patterns on the whole name ('*/x': x at any depth). The
# sampling temperature is the summary's top-level one; a probe's fitted temperatures (checkpoints/*/texts/*/
# temperature) are results and stay
ignore = "shots,items,n,*/n,steps,gen_length,block_length,temperature,over_context_window,n_samples,*/n_samples," \
         "samples_cut_to_sample_len,*/samples_cut_to_sample_len,mmlu_questions,complete,*/complete"
KEYS = setting_keys(globals())


def numbers(value, prefix=""):
    """{path: float} for every numeric leaf (bools and the 'config' subtree left out)."""
    if isinstance(value, dict):
        found = {}
        for k, v in value.items():
            if k != "config":
                found.update(numbers(v, f"{prefix}{k}/"))
        return found
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix.rstrip("/"): float(value)}
    return {}


def read_run(spec, ignored=()):
    """The numbers of one run: the union of its files' numbers (a name in two files is an error), less the
    ones a pattern of `ignored` matches (fnmatch on the whole name)."""
    merged = {}
    for path in spec.split("+"):
        found = numbers(parse_json(read_text(path, "result file"), path))
        found = {k: v for k, v in found.items() if not any(fnmatch.fnmatchcase(k, p) for p in ignored)}
        clash = sorted(set(found) & set(merged))
        if clash:
            raise InputError(f"{path}: {clash[0]} is also in another file of the run {spec}")
        merged.update(found)
    return merged


def parse_arms(text):
    """{arm: [run spec, ...]} from 'name:run,run;name:run'."""
    parsed = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, runs = part.partition(":")
        if not sep or not name or not runs:
            raise ConfigError(f"--arms: expected 'name:run,run,...' separated by ';', got {part!r}")
        parsed[name] = [r for r in runs.split(",") if r]
    if not parsed:
        raise ConfigError("--arms is empty")
    return parsed


def summarize_arm(runs):
    """{number: {'mean', 'std' (population), 'n', 'values'}} over the numbers every run has."""
    common = set.intersection(*(set(r) for r in runs))
    return {k: {"mean": statistics.fmean(r[k] for r in runs), "std": statistics.pstdev([r[k] for r in runs]),
                "n": len(runs), "values": [r[k] for r in runs]} for k in sorted(common)}


def paired_differences(runs_a, runs_b):
    """{number: {'differences': [a_i - b_i], 'mean', and with two or more pairs 'sd' and 'interval_95' (the
    t-interval of the mean difference)}} over the numbers both arms' runs all have."""
    if len(runs_a) != len(runs_b):
        raise ConfigError(f"a pair needs as many runs on each side ({len(runs_a)} vs {len(runs_b)})")
    common = set.intersection(*(set(r) for r in runs_a + runs_b))
    out = {}
    for k in sorted(common):
        d = [a[k] - b[k] for a, b in zip(runs_a, runs_b)]
        out[k] = {"differences": d, "mean": statistics.fmean(d)}
        if len(d) >= 2:
            sd = statistics.stdev(d)
            half = stats.t_quantile(0.975, len(d) - 1) * sd / math.sqrt(len(d))
            out[k] |= {"sd": sd, "interval_95": (out[k]["mean"] - half, out[k]["mean"] + half)}
    return out


def aggregate(arm_runs, pairs):
    """The whole report: per arm its summary and the numbers left out, then the pairs."""
    report = {"arms": {}, "pairs": {}}
    for name, runs in arm_runs.items():
        every = set.union(*(set(r) for r in runs))
        report["arms"][name] = {"runs": len(runs), "numbers": summarize_arm(runs),
                                "not_in_every_run": sorted(every - set.intersection(*(set(r) for r in runs)))}
    for a, b in pairs:
        report["pairs"][f"{a}-{b}"] = paired_differences(arm_runs[a], arm_runs[b])
    report["correlations"] = correlations(arm_runs)
    return report


CORRELATED = [("checkpoints/ft/drift/mean", "checkpoints/ft/forgetting")]  # the paper's Figure 4: drift vs forgetting


def correlations(arm_runs):
    """{arm: {'x ~ y': Pearson over the arm's seeds}} for the CORRELATED pairs every run of the arm has."""
    out = {}
    for name, runs in arm_runs.items():
        for x, y in CORRELATED:
            if len(runs) >= 3 and all(x in r and y in r for r in runs):
                out.setdefault(name, {})[f"{x} ~ {y}"] = stats.pearson([r[x] for r in runs], [r[y] for r in runs])
    return out


def print_report(report):
    names = [k for arm in report["arms"].values() for k in arm["numbers"]]
    w = max(map(len, names), default=0)  # one column of names, however long they are
    for name, arm in report["arms"].items():
        print(f"{name} ({arm['runs']} runs): mean +- population std")
        for k, v in arm["numbers"].items():
            print(f"  {k:{w}} {v['mean']:10.4f} +- {v['std']:.4f}")
        if arm["not_in_every_run"]:
            print(f"  left out (not in every run): {', '.join(arm['not_in_every_run'][:10])}")
    for name, diffs in report["pairs"].items():
        print(f"{name}: per-seed differences, mean [95% t-interval] (descriptions; the tests are claims.py's)")
        for k, v in diffs.items():
            interval = f" [{v['interval_95'][0]:+.4f}, {v['interval_95'][1]:+.4f}]" if "interval_95" in v else ""
            print(f"  {k:{w}} {' '.join(f'{d:+.4f}' for d in v['differences'])}   mean {v['mean']:+.4f}{interval}")
    for name, found in report.get("correlations", {}).items():
        for k, v in found.items():
            print(f"{name}: {k}: r {v['r'] if v['r'] is None else round(v['r'], 3)} over {v['n']} seeds (a "
                  "description; the dissociation's test is claims.py's seed-paired regression)")
    for name, subsets in report.get("items", {}).items():
        print(f"{name}: item level, per seed a only / b only (McNemar p within the seed); seed-then-item interval")
        for subset, metrics in subsets.items():
            for metric, v in metrics.items():
                seeds = " ".join(f"{s['a_only']}/{s['b_only']} ({s['p']:.2f})" for s in v["per_seed"])
                interval = f"; [{v['interval_95'][0]:+.3f}, {v['interval_95'][1]:+.3f}]" if "interval_95" in v else ""
                print(f"  {subset:10} {metric:21} {v['a_mean']:.3f} vs {v['b_mean']:.3f} over {v['pairs']} pairs: "
                      f"{seeds}{interval}")


def main(argv):
    configure(globals(), KEYS, argv)
    arm_specs = parse_arms(arms)
    pairs = [tuple(p.split("/")) for p in pair.split(",") if p]
    for p in pairs:
        if len(p) != 2 or not set(p) <= set(arm_specs):
            raise ConfigError(f"--pair takes 'a/b' with arms among {list(arm_specs)}; got {'/'.join(p)}")
    ignored = set(ignore.split(","))
    report = aggregate({name: [read_run(r, ignored) for r in runs] for name, runs in arm_specs.items()}, pairs)
    if items:
        item_specs = parse_arms(items)
        if {a for p in pairs for a in p} - set(item_specs):
            raise ConfigError(f"--items must list every arm of --pair ({pair}); it lists {', '.join(item_specs)}")
        leaked_indices = set(read_json_object(leaked, "leaked-items file").get("indices", [])) if leaked else set()
        per_arm = {name: [read_items(path) for path in paths] for name, paths in item_specs.items()}
        report["items"] = {f"{a}-{b}": item_tests(per_arm[a], per_arm[b], leaked_indices) for a, b in pairs}
        report["leaked_items"] = sorted(leaked_indices)
    print_report(report)
    if out:
        write_json(out, report)
        print(f"wrote {out}")


if __name__ == "__main__":
    run_main("replication/aggregate.py", main, sys.argv[1:], lambda: 0)
