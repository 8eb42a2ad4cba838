"""
Per-item evaluation records (evaluate.py's .jsonl, or .jsonl.gz as the replication keeps them) and the
item-level comparison of two arms per 0/1 metric: McNemar's exact test within each seed, and over the seeds
an interval that resamples seeds, then items. Shared by aggregate.py (the arms) and compare.py (two evaluations of the lever
curves).
"""

import gzip
import statistics

from harness.errors import InputError, parse_json
from replication import stats


ITEM_METRICS = ("exact", "functional", "functional_random200", "dfa")


def read_items(path):
    """{item index: scores} from an evaluate.py records file (.jsonl, or .jsonl.gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read the item records ({e})") from None
    records = [parse_json(line, path, i) for i, line in enumerate(lines, 1) if line.strip()]
    return {r["index"]: r["scores"] for r in records}


def item_tests(items_a, items_b, leaked_indices):
    """{subset: {metric: ...}} for two arms' per-seed item scores (paired by seed, then by item index): the
    pairs and each arm's mean over every (seed, item) pair, McNemar's exact test within each seed
    ('per_seed'), and with two or more seeds the seed-then-item bootstrap interval of the difference
    ('interval_95'). Pooling the seeds into one McNemar would treat seeds as interchangeable items; they are not
    (stats.py). A score that is not 0/1 (undecided) leaves its (seed, item) pair out."""
    subsets = {"all": lambda i, s: i not in leaked_indices,
               "nontrivial": lambda i, s: i not in leaked_indices and s.get("gold_language") == "other",
               "leaked": lambda i, s: i in leaked_indices}
    report = {}
    for subset, keep in subsets.items():
        report[subset] = {}
        for metric in ITEM_METRICS:
            per_seed = [paired_outcomes(seed_a, seed_b, metric, keep) for seed_a, seed_b in zip(items_a, items_b)]
            per_seed = [(a, b) for a, b in per_seed if a]
            if not per_seed:
                continue
            a_all, b_all = [x for a, _ in per_seed for x in a], [y for _, b in per_seed for y in b]
            found = {"pairs": len(a_all), "a_mean": statistics.fmean(a_all), "b_mean": statistics.fmean(b_all),
                     "per_seed": [stats.mcnemar(a, b) | {"pairs": len(a)} for a, b in per_seed]}
            if len(per_seed) >= 2:
                found["interval_95"] = stats.cluster_bootstrap([a for a, _ in per_seed], [b for _, b in per_seed])
            report[subset][metric] = found
    return report


def paired_outcomes(seed_a, seed_b, metric, keep):
    """The 0/1 outcomes of one seed's two runs on the items both scored and `keep` admits, in item order."""
    a, b = [], []
    for i in sorted(set(seed_a) & set(seed_b)):
        x, y = seed_a[i].get(metric), seed_b[i].get(metric)
        if keep(i, seed_a[i]) and x in (0.0, 1.0) and y in (0.0, 1.0):
            a.append(x), b.append(y)
    return a, b
