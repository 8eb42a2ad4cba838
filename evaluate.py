"""
Generation with LLaDA's low-confidence remasking sampler, and the command that scores it (scoring.py).

  python evaluate.py --checkpoint out-tiny --task tiny-regex
  torchrun --nproc_per_node 8 evaluate.py --checkpoint out --task gsm8k --shots 4

checkpoint: a hub id, a release checkpoint directory, or a train.py output directory (its final/).
Writes <out_dir>/<task>-<shots>shot.jsonl (prompt, generation, prediction, gold, scores per item, in item
order) and <out_dir>/<task>-<shots>shot.json (the summary). Each rank appends every record to its own
<task>-<shots>shot.rank<r>.jsonl as soon as it is scored, so a crash or a kill keeps what was done, and
`--resume true` skips the items already there; at the end rank 0 merges the parts into the .jsonl.

Sampler (LLaDA's public generate.py, github.com/ML-GSAI/LLaDA): the canvas is the prompt followed by
gen_length mask tokens, filled block by block, left to right; each block gets steps / n_blocks steps and
each step commits the most confident predictions of the block's still-masked positions.
"""

import glob
import json
import os
import sys

import torch

import data
import model as modellib
from metrics import scoring
from sampler import Decoding, check_schedule, cut_at_stop, generate
from configurator import SEED_RANGE, check_ranges, configure, setting_keys
from harness.errors import ConfigError, read_json_object
from harness.outputs import disk_errors, prepare_output_dir, refuse_used, write_json, write_jsonl
from harness.run_folder import run_config, share
from harness.runtime import (DIST_TIMEOUT, check_ranks_agree, close_distributed, digest, init_distributed,
                             resolve_dtype, run_main)

# -----------------------------------------------------------------------------
# settings
checkpoint = "out"
trust_remote_code = False  # run a tokenizer shipped as code beside the checkpoint (Dream's): for sources you trust
task = "gsm8k"
data_dir = ""  # local release files; empty = the hub (gsm8k, spider)
spider_db_dir = ""  # Spider's database/ folder (<db_id>/<db_id>.sqlite); empty = <data_dir>/database
spider_tables = ""  # Spider's tables.json (foreign keys for exact-set match); empty = <data_dir>/tables.json
shots = 0  # 0 or 4 in the paper
limit = 0  # > 0: the first N evaluation items only
split = "eval"  # 'eval' (the evaluation split) or 'val' (val_holdout items carved from the training split)
val_holdout = 0  # with split=val: the size train.py held out (--val_holdout)
batch_size = 8
steps = 0  # 0 = 128, or gen_length when shorter (paper: 128 steps)
gen_length = 0  # 0 = the task's (256 GSM8K, 512 Django / NL-RX / Spider)
block_length = 0  # 0 = min(128, gen_length)
temperature = 0.0  # 0 = greedy (the paper)
cfg_scale = 0.0  # classifier-free guidance scale; 0 = off
# decoding options, all off by default (the paper's numbers): sampler.Decoding says what each does
threshold = 0.0  # > 0: Fast-dLLM's parallel decoding (every token at least this confident per step)
remasking = "low_confidence"  # or 'random' (LLaDA's other remasking)
logits_eos_inf = False  # LLaDA's generate.py option: never draw EOS
confidence_eos_eot_inf = False  # LLaDA's generate.py option: a drawn end-of-turn is committed last
cache = "none"  # 'prefix' | 'dual': Fast-dLLM's approximate KV cache, refreshed once per block
chat = "auto"  # 'auto' (instruct checkpoints), 'true', 'false'
dtype = "auto"  # the weights' dtype: auto = bfloat16 on GPU, float32 on CPU
device = "auto"
seed = 0  # the sampler's (temperature > 0) and the scorers' (NL-RX test strings)
early_stop = True  # a row leaves the batch once its first stop token is in a finished block (same scores)
sql_max_steps = scoring.SQL_MAX_STEPS  # sqlite instructions per Spider query (counted, the same on any machine)
resume = False  # true: keep the records already written for this task and shots, score only the rest
overwrite = False  # true: replace earlier results of this task and shots in out_dir
out_dir = ""  # empty = <run>/eval for a train.py output folder, else ./eval/<checkpoint name>
dist_timeout = DIST_TIMEOUT  # seconds a rank waits for the others in a collective
KEYS = setting_keys(globals())
# the one line Ctrl-C prints (harness/runtime.run_main): what was kept, and how to go on
INTERRUPTED = "interrupted: the records scored so far are kept; continue them with the same flags and --resume=true"
_run_lock = None  # the shared lock on the evaluated run's .lock (harness/run_folder.share)

# -----------------------------------------------------------------------------
# the command


def default_out_dir(ckpt_dir):
    """Beside a train.py run's final/ (<run>/eval), else ./eval/<checkpoint name>: never inside a checkpoint
    folder, which a later save would replace."""
    if os.path.isdir(checkpoint) and os.path.abspath(ckpt_dir) != os.path.abspath(checkpoint):
        return os.path.join(checkpoint, "eval")
    return os.path.join("eval", os.path.basename(os.path.normpath(checkpoint)) or "checkpoint")


def output_stem(ckpt_dir):
    """<out_dir>/<task>-<shots>shot, its folder checked now, before any expensive work: writable, and holding
    no results of this task and shots unless --resume (continue them) or --overwrite (replace them)."""
    target = out_dir or default_out_dir(ckpt_dir)
    prepare_output_dir(target)
    stem = os.path.join(target, f"{task}-{shots}shot" + ("-val" if split == "val" else ""))
    held = [os.path.basename(p) for p in [stem + ".jsonl", stem + ".json"] + glob.glob(stem + ".rank*.jsonl")
            if os.path.exists(p)]
    refuse_used(target, held, "results of this evaluation", resume, overwrite)
    return stem


def read_records(paths):
    """{item index: record} from JSONL files; a last line cut short by a kill is skipped."""
    done = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[record["index"]] = record
    return done


def open_for_append(path):
    """The file opened to append lines; a last line a kill cut short is ended first, so that the next record
    starts a line of its own (read_records drops the cut one)."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut_short = f.read(1) != b"\n"
        if cut_short:
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n")
    return open(path, "a", encoding="utf-8")


def previous_records(stem):
    """The records of an earlier run of this task and shots (merged file and rank parts), for --resume."""
    return read_records([p for p in [stem + ".jsonl"] + sorted(glob.glob(stem + ".rank*.jsonl")) if os.path.exists(p)])


def score_generation(ids, item, index, prompt, tokenizer, stop_ids, use_chat, mask_id):
    """The record of one item: the generation cut at the first stop token, the prediction read from it
    (GSM8K plain prompts cut at a next exemplar, other tasks raw), its scores: scoring.score_generation."""
    text = tokenizer.decode(cut_at_stop(ids, stop_ids), skip_special_tokens=True)
    db_dir = spider_db_dir or (os.path.join(data_dir, "database") if data_dir else "")
    tables = spider_tables or (os.path.join(data_dir, "tables.json") if data_dir else "")
    prediction, notes, scores = scoring.score_generation(task, text, item, data.TASKS[task]["input_label"], use_chat,
                                                         seed, db_dir, tables, sql_max_steps)
    record = {"index": index, "prompt": tokenizer.decode(prompt), "prompt_tokens": len(prompt), "generation": text,
              "prediction": prediction, "gold": item["output"], "scores": scores}
    record.update(notes)
    masks = sum(t == mask_id for t in ids)
    if masks:  # the sampler left positions unfilled (a model that predicts the mask token itself)
        record["masks_left"] = masks
    return record


def producing_settings(ckpt_dir, items, n_steps, length, block, use_chat):
    """What decides a record: the model, the items, the prompts, the sampler and the scorers. A resume under
    other values would mix two evaluations in one summary, so records carry a digest of these and a resume
    with other values is refused. The weights and the items are digested by content: a checkpoint retrained in
    place, or a test file rewritten under the same path, is another evaluation. --limit, --batch_size and
    --early_stop are not among them: greedy decoding is the same in any batch, and with temperature each item
    draws from its own generator (item_generators)."""
    return {"checkpoint": os.path.abspath(ckpt_dir), "weights_sha256": modellib.weights_digest(ckpt_dir),
            "items_sha256": digest(items), "task": task, "shots": shots, "split": split,
            "val_holdout": val_holdout, "data_dir": os.path.abspath(data_dir) if data_dir else "", "steps": n_steps,
            "gen_length": length, "block_length": block, "temperature": temperature, "cfg_scale": cfg_scale,
            "threshold": threshold, "remasking": remasking, "logits_eos_inf": logits_eos_inf,
            "confidence_eos_eot_inf": confidence_eos_eot_inf, "cache": cache,
            "chat": use_chat, "seed": seed, "sql_max_steps": sql_max_steps}


def load_items():
    """(the items to score, the train items the shots are drawn from): all of them, before --limit."""
    if split == "val":
        items = data.holdout_split(data.load_task(task, "train", data_dir or None), val_holdout, "val")
    else:
        items = data.load_task(task, "eval", data_dir or None)
    return items, data.load_task(task, "train", data_dir or None) if shots else []


def decoding(eot_id):
    """The sampler's Decoding of the flags (sampler.Decoding.check names a flag that cannot run)."""
    return Decoding(temperature, cfg_scale, threshold, remasking, logits_eos_inf, confidence_eos_eot_inf, eot_id,
                    cache)


def item_generators(indices, dev):
    """With temperature or random remasking, one generator per item, seeded by (seed, item index): an item's draws are the same
    in any batch, on any rank, with or without the early stop, and after a resume (sampler.generate). None
    for greedy decoding, which draws nothing."""
    if temperature == 0 and remasking != "random":
        return None
    return [torch.Generator(device=dev).manual_seed(seed * 1_000_003 + i) for i in indices]


def check_resumable(stem, done, settings):
    """Refuse to resume records made under other settings, naming what differs (from <stem>.settings.json)."""
    expected = digest(settings)
    foreign = [i for i, r in done.items() if r.get("settings_digest") != expected]
    if not foreign:
        return
    saved = read_json_object(stem + ".settings.json", "settings file") if os.path.exists(stem + ".settings.json") else {}
    differ = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v] or \
        ["records from an older evaluate.py, which did not record their settings"]
    raise ConfigError(f"{stem}.jsonl holds {len(foreign)} records made under other settings ({'; '.join(differ)}); "
                      f"resume with those settings, or --overwrite=true to replace them")


def merge_and_summarize(stem, n_items, run, max_seq_len, cfg):
    """Rank 0, after every rank is done: one .jsonl in item order (the items of this --limit), the rank
    parts removed, the summary."""
    parts = sorted(glob.glob(stem + ".rank*.jsonl"))
    earlier = [stem + ".jsonl"] if resume and os.path.exists(stem + ".jsonl") else []
    records = sorted((r for r in read_records(earlier + parts).values() if r["index"] < n_items),
                     key=lambda r: r["index"])
    write_jsonl(stem + ".jsonl", records)
    for p in parts:
        os.remove(p)
    # past the trained context the positions are extrapolated: run anyway, but say how often
    over = sum(r["prompt_tokens"] + run["gen_length"] > max_seq_len for r in records)
    if over:
        print(f"warning: {over} of {len(records)} prompts + gen_length={run['gen_length']} exceed the model's "
              f"context window of {max_seq_len} tokens")
    summary = {"task": task, "shots": shots, "checkpoint": checkpoint, "items": n_items, **run,
               "over_context_window": over, **scoring.summarize(records), **forward_passes(records), "config": cfg}
    write_json(stem + ".json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"wrote {stem}.jsonl and {stem}.json")


def forward_passes(records):
    """The mean forward passes per item (NFE, as if each ran alone), over the records that counted them."""
    counted = [r["nfe"] for r in records if "nfe" in r]
    return {"nfe": sum(counted) / len(counted)} if counted else {}


def clear_results(stem):
    """--overwrite: this task's and shots' earlier results removed (records, rank parts, summary, settings)."""
    for p in [stem + ".jsonl", stem + ".json", stem + ".settings.json"] + glob.glob(stem + ".rank*.jsonl"):
        if os.path.exists(p):
            os.remove(p)


def validate():
    """Every flag checked before anything is loaded; returns the schedule (gen_length, block_length, steps)
    with the task's defaults filled in."""
    if task not in data.TASKS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(data.TASKS)}")
    if split not in ("eval", "val") or (split == "val") != (val_holdout > 0):
        raise ConfigError("--split is 'eval', or 'val' with --val_holdout N (the N train.py held out)")
    check_ranges(globals(), {"shots": (0, None), "limit": (0, None), "batch_size": (1, None),
                             "sql_max_steps": (1, None), "steps": (0, None), "gen_length": (0, None),
                             "block_length": (0, None), "val_holdout": (0, None), "seed": SEED_RANGE})
    decoding(None)._replace(confidence_eos_eot_inf=False).check()  # its need of an end-of-turn id: once loaded
    length = gen_length or data.TASKS[task]["gen_length"]
    block = block_length or min(128, length)
    n_steps = steps or min(128, length)
    check_schedule(length, block, n_steps)
    return length, block, n_steps


def score_items(model, tokenizer, items, train_items, mine, schedule, options, stop_ids, settings, use_chat, out,
                show, dev):
    """Generate and score this rank's items in batches of like prompt lengths, each record appended to `out`
    (and flushed) the moment it is scored."""
    length, block, n_steps = schedule
    prompt_of = {i: data.format_example(task, items[i], tokenizer, data.choose_shots(train_items, shots, items[i]),
                                        chat=use_chat)[0] for i in mine}
    mine = sorted(mine, key=lambda i: (len(prompt_of[i]), i))  # less padding (records keep their index)
    from tqdm import tqdm
    for start in tqdm(range(0, len(mine), batch_size), disable=not show, desc=f"{task} {shots}-shot"):
        idx = mine[start:start + batch_size]
        prompts = [prompt_of[i] for i in idx]
        stats = {}
        generated = generate(model, prompts, steps=n_steps, gen_length=length, block_length=block, decoding=options,
                             generator=item_generators(idx, dev), stop_ids=stop_ids if early_stop else None,
                             stats=stats)
        for i, prompt, ids, nfe in zip(idx, prompts, generated.tolist(), stats["nfe"]):
            record = score_generation(ids, items[i], i, prompt, tokenizer, stop_ids, use_chat,
                                      model.cfg.mask_token_id) | {"nfe": nfe, "settings_digest": digest(settings)}
            out.write(json.dumps(record) + "\n")
            out.flush()


def main(argv):
    cfg = configure(globals(), KEYS, argv)
    length, block, n_steps = validate()
    import torch.distributed as dist
    world, rank, dev = init_distributed(device, dist_timeout)
    master = rank == 0

    ckpt_dir = modellib.resolve_checkpoint_dir(checkpoint)
    global _run_lock
    _run_lock = share(ckpt_dir)  # held to the end: train.py --overwrite cannot delete the run under us
    stem = output_stem(ckpt_dir)
    done = previous_records(stem) if resume else {}
    use_chat = data.uses_chat(chat, checkpoint, run_config(ckpt_dir))
    items, train_items = load_items()
    settings = producing_settings(ckpt_dir, items, n_steps, length, block, use_chat)
    check_resumable(stem, done, settings)  # before the model is loaded
    if world > 1:
        dist.barrier()  # every rank has read the old parts before rank 0 clears them
    if master and overwrite and not resume:
        clear_results(stem)
    model = modellib.load_for_inference(ckpt_dir, dtype=resolve_dtype(dtype, dev), device=dev)
    tokenizer = modellib.load_tokenizer(ckpt_dir, model.cfg, trust_remote_code)
    if limit:
        items = items[:limit]
    if not items:
        raise ConfigError(f"no {task} evaluation items to score (data_dir={data_dir!r}, limit={limit})")
    check_ranks_agree({"settings": digest(settings | {"limit": limit}), "items": digest(items)}, world > 1)
    stop_ids = {model.cfg.eos_token_id}
    eot_id = data.end_of_turn_id(tokenizer) if use_chat or confidence_eos_eot_inf else None
    options = decoding(eot_id).check()
    if use_chat:
        stop_ids.add(eot_id)
    if master:
        write_json(stem + ".settings.json", settings)

    mine = [i for i in range(len(items)) if i not in done][rank::world]
    if master and done:
        print(f"resuming: {len(done)} of {len(items)} items already scored in {stem}")
    # disk_errors outside the file too: a full disk fails the write, and then the close's own flush
    with disk_errors(f"{stem}.rank{rank}.jsonl", "free some space and resume with --resume=true (the records "
                     "written so far are kept)"), open_for_append(f"{stem}.rank{rank}.jsonl") as out:
        score_items(model, tokenizer, items, train_items, mine, (length, block, n_steps), options, stop_ids, settings,
                    use_chat, out, master, dev)
    if world > 1:
        dist.barrier()
    if master:
        run = {"steps": n_steps, "gen_length": length, "block_length": block, "temperature": temperature}
        merge_and_summarize(stem, len(items), run, model.cfg.max_seq_len, cfg)
    close_distributed(world)


if __name__ == "__main__":
    run_main("evaluate.py", main, sys.argv[1:], lambda: dist_timeout, INTERRUPTED)
