"""
Two evaluations of the same items, item by item: McNemar's exact test per metric, on all items and on the
non-trivial golds (items.item_tests with one run a side). How the levers in replication/README.md are
compared:

  python -m replication.compare --a results/curve/lr3e-4-stepfinal-items.jsonl.gz \
      --b results/curve/lr1e-3-step1880-items.jsonl.gz
"""

import sys

from configurator import configure, setting_keys
from harness.errors import ConfigError
from harness.runtime import run_main
from replication.items import item_tests, read_items

a = ""  # an evaluate.py records file (.jsonl or .jsonl.gz)
b = ""  # another, of the same items
KEYS = setting_keys(globals())


def main(argv):
    configure(globals(), KEYS, argv)
    if not a or not b:
        raise ConfigError("pass --a and --b, two evaluate.py records files of the same items")
    tests = item_tests([read_items(a)], [read_items(b)], leaked_indices=set())
    print(f"a = {a}\nb = {b}")
    for subset in ("all", "nontrivial"):
        for metric, v in tests[subset].items():
            m = v["per_seed"][0]  # one run a side: one 'seed'
            print(f"{subset:10} {metric:21} a {v['a_mean']:.3f}  b {v['b_mean']:.3f}  over {v['pairs']} items: "
                  f"a only {m['a_only']}, b only {m['b_only']}, McNemar p {m['p']:.3f}")


if __name__ == "__main__":
    run_main("replication/compare.py", main, sys.argv[1:], lambda: 0)
