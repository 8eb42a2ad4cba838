"""
The evaluation items that appear verbatim (same description, same regex) among the items a run trained on:
duplicates in the NL-RX release, carried into LLM-JEPA's split. A model can score them by memory, so the
replication reports them apart (aggregate.py --leaked).

  python -m replication.leaks --data_dir $DATA/nl_rx/llm_jepa --limit 500 --val_holdout 500 --out leaked.json

Writes {"indices": [...], "items": N, "trained_on": M}: the positions among the first --limit evaluation
items, against the training split less its --val_holdout held-out items (what train.py trained on).
"""

import sys

import data
from configurator import configure, setting_keys
from harness.errors import ConfigError
from harness.outputs import write_json
from harness.runtime import run_main

data_dir = ""  # the NL-RX release files (LLM-JEPA's split)
task = "nlrx"
limit = 500  # the first N evaluation items (as evaluate.py --limit)
val_holdout = 500  # as train.py --val_holdout: those training items were not trained on
out = ""  # the JSON file to write
KEYS = setting_keys(globals())


def leaked(eval_items, train_items):
    """Positions of the evaluation items whose (input, output) pair is among the training items."""
    seen = {(x["input"], x["output"]) for x in train_items}
    return [i for i, x in enumerate(eval_items) if (x["input"], x["output"]) in seen]


def main(argv):
    configure(globals(), KEYS, argv)
    if not data_dir or not out:
        raise ConfigError("pass --data_dir (the task's release files) and --out (the JSON file to write)")
    train = data.load_task(task, "train", data_dir)
    if val_holdout:
        train = data.holdout_split(train, val_holdout, "train")
    items = data.load_task(task, "eval", data_dir)[:limit or None]
    found = leaked(items, train)
    write_json(out, {"indices": found, "items": len(items), "trained_on": len(train)})
    print(f"{len(found)} of the first {len(items)} {task} evaluation items appear among the {len(train)} training "
          f"items -> {out}")


if __name__ == "__main__":
    run_main("replication/leaks.py", main, sys.argv[1:], lambda: 0)
