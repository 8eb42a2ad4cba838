"""
Per-item evaluation records (evaluate.py's .jsonl, or .jsonl.gz as the replication keeps them) and the
item-level test between two arms: McNemar's exact test per 0/1 metric, pooled over seeds by listing every
(seed, item) pair once. Shared by aggregate.py (the arms) and compare.py (two evaluations of the lever
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
    """{subset: {metric: McNemar pooled over seeds}} for two arms' per-seed item scores (paired by seed,
    then by item index). A score that is not 0/1 (undecided) leaves its (seed, item) pair out."""
    subsets = {"all": lambda i, s: i not in leaked_indices,
               "nontrivial": lambda i, s: i not in leaked_indices and s.get("gold_language") == "other",
               "leaked": lambda i, s: i in leaked_indices}
    report = {}
    for subset, keep in subsets.items():
        report[subset] = {}
        for metric in ITEM_METRICS:
            a, b = [], []
            for seed_a, seed_b in zip(items_a, items_b):
                for i in sorted(set(seed_a) & set(seed_b)):
                    x, y = seed_a[i].get(metric), seed_b[i].get(metric)
                    if keep(i, seed_a[i]) and x in (0.0, 1.0) and y in (0.0, 1.0):
                        a.append(x), b.append(y)
            if a:
                report[subset][metric] = stats.mcnemar(a, b) | {"pairs": len(a), "a_mean": statistics.fmean(a),
                                                                 "b_mean": statistics.fmean(b)}
    return report
