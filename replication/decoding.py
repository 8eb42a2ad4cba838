"""
The decoding options (sampler.Decoding) against the exact sampler on a trained checkpoint's evaluation items:
speed (tokens/s up to the stop cut, Fast-dLLM's definition), forward passes per item, the task's scores, and
how many outputs equal the exact sampler's. The variants take turns over the repeats in one process, so a
slow moment of the machine hits them alike; the first repeat's outputs are scored. It made
replication/results/decoding/ on the replication's fine-tuned seed-42 baseline (docs/speed.md):

  python -m replication.decoding --checkpoint <run>/final --task nlrx --data_dir $DATA/nl_rx/llm_jepa \
      --items 200 --settings 64/32/64,256/32/256
"""

import json
import sys

import data
import model as modellib
from configurator import check_ranges, configure, setting_keys
from harness.errors import ConfigError
from harness.outputs import disk_errors, prepare_output_dir
from harness.runtime import init_distributed, resolve_dtype, run_main
from harness.timing import median, timed
from metrics import scoring
from sampler import Decoding, check_schedule, cut_at_stop, generate

# -----------------------------------------------------------------------------
# settings
checkpoint = ""  # the fine-tuned model (a train.py run folder or a checkpoint folder)
task = "tiny-regex"
data_dir = ""
items = 200  # the first N items of the evaluation split (never trained on)
settings = "256/32/256,512/128/128"  # gen/block/steps: Fast-dLLM's GSM8K setting, the paper's NL-RX one
variants = "exact,threshold,prefix,dual,threshold+dual"
threshold = 0.9  # Fast-dLLM's
repeats = 3  # timed passes over the items per variant, interleaved (median and range reported)
batch_size = 8
trust_remote_code = False  # run a tokenizer shipped as code beside the checkpoint (Dream's): for sources you trust
dtype = "auto"
device = "auto"
out = "decoding.json"
KEYS = setting_keys(globals())

VARIANTS = {"exact": {}, "threshold": {"threshold": None}, "prefix": {"cache": "prefix"}, "dual": {"cache": "dual"},
            "threshold+dual": {"threshold": None, "cache": "dual"}}  # None: --threshold


def schedules():
    """[(setting text, gen_length, block_length, steps)] of --settings, each checked before the model loads."""
    found = []
    for setting in settings.split(","):
        parts = setting.split("/")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"--settings: {setting!r} is not gen/block/steps (e.g. 256/32/256)")
        check_schedule(*map(int, parts), f"--settings={setting}: ")
        found.append((setting, *map(int, parts)))
    return found


def scores_of(outputs, tokenizer, task_items):
    """The task's summary scores of {item index: generated ids cut at the stop}, read as evaluate.py reads a
    generation (scoring.score_generation, 0-shot plain prompts)."""
    label = data.TASKS[task]["input_label"]
    records = [{"scores": scoring.score_generation(task, tokenizer.decode(ids, skip_special_tokens=True),
                                                   task_items[i], label)[2]} for i, ids in outputs.items()]
    return {k: x for k, x in scoring.summarize(records).items() if isinstance(x, float)}


def compare(net, tokenizer, task_items, dev, chosen):
    """Every variant at every setting: rows of median and range of the wall time, tokens/s, forward passes,
    scores and agreement with the exact sampler."""
    prompts = [data.format_example(task, x, tokenizer)[0] for x in task_items]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # as evaluate.py batches them
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    stops, rows = {net.cfg.eos_token_id}, []
    for setting, length, block, steps in schedules():
        outputs, times, nfe = {}, {v: [] for v in chosen}, {}
        for repeat in range(repeats):
            for v in chosen:
                options = Decoding(**{k: threshold if x is None else x for k, x in VARIANTS[v].items()})
                stats = [{} for _ in batches]
                done, seconds = timed(dev, lambda: [generate(net, [prompts[i] for i in b], steps=steps, gen_length=length,
                                                             block_length=block, stop_ids=stops, stats=st, decoding=options)
                                                    for b, st in zip(batches, stats)])
                times[v].append(seconds)
                if repeat == 0:
                    generated = [row for part in done for row in part.tolist()]
                    outputs[v] = {i: cut_at_stop(row, stops) for i, row in zip([i for b in batches for i in b], generated)}
                    nfe[v] = sum(n for st in stats for n in st["nfe"]) / len(task_items)
        for v in chosen:
            seconds = median(times[v])
            rows.append({"setting": setting, "variant": v, "seconds_median": seconds,
                         "seconds_range": [min(times[v]), max(times[v])],
                         "tokens_per_s": sum(len(ids) for ids in outputs[v].values()) / seconds, "nfe": nfe[v],
                         "same_as_exact": sum(outputs[v][i] == outputs["exact"][i] for i in outputs[v]) / len(task_items)
                         if "exact" in outputs else None,
                         "scores": scores_of(outputs[v], tokenizer, task_items)})
    return rows


def print_table(result):
    print(f"decoding ({result['task']}, {result['items']} items, {result['repeats']} interleaved repeats, "
          f"threshold {result['threshold']}):")
    print(f"{'gen/block/steps':16} {'variant':15} {'s median':>9} {'range':>15} {'tokens/s':>9} {'NFE':>6} "
          f"{'same':>6}  scores")
    for r in result["rows"]:
        same = f"{r['same_as_exact']:.0%}" if r["same_as_exact"] is not None else "-"
        scores = ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items() if "floor/" not in k)  # the JSON: all
        print(f"{r['setting']:16} {r['variant']:15} {r['seconds_median']:9.2f} "
              f"{r['seconds_range'][0]:7.2f}-{r['seconds_range'][1]:<7.2f} {r['tokens_per_s']:9.1f} {r['nfe']:6.1f} "
              f"{same:>6}  {scores}")


def main(argv):
    cfg = configure(globals(), KEYS, argv)
    if not checkpoint:
        raise ConfigError("--checkpoint is needed: a trained model (a train.py run folder or a checkpoint folder)")
    if task not in data.TASKS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(data.TASKS)}")
    chosen = [v for v in variants.split(",") if v]
    if not chosen or set(chosen) - set(VARIANTS):
        raise ConfigError(f"--variants must be among {', '.join(VARIANTS)}")
    check_ranges(globals(), {"items": (1, None), "repeats": (1, None), "batch_size": (1, None),
                             "threshold": (0.000001, 1)})
    schedules()
    prepare_output_dir(".", "--out")
    _, _, dev = init_distributed(device)
    ckpt_dir = modellib.resolve_checkpoint_dir(checkpoint)
    net = modellib.load_for_inference(ckpt_dir, dtype=resolve_dtype(dtype, dev), device=dev)
    tokenizer = modellib.load_tokenizer(ckpt_dir, net.cfg, trust_remote_code)
    task_items = data.load_task(task, "eval", data_dir or None)[:items]
    result = {"config": cfg, "checkpoint": checkpoint, "task": task, "items": len(task_items), "repeats": repeats,
              "threshold": threshold, "rows": compare(net, tokenizer, task_items, dev, chosen)}
    print_table(result)
    with disk_errors(out), open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main("replication/decoding.py", main, sys.argv[1:], lambda: 0)
