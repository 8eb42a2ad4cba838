"""
DLLM-JEPA fine-tuning, a hand-written torchrun FSDP2 loop.

  torchrun --nproc_per_node 8 train.py --task gsm8k     # LLaDA-8B-Base, the paper's aggressive setting
  python train.py --preset tiny                          # CPU, a few minutes: the offline task on a tiny model

Configuration: the constants below, overridden by a preset (--preset aggressive | wide-t | tiny), then by
an optional config file (--config file.json or a .py of assignments), then by flags (--key=value or
--key value), in that order. Outputs in out_dir: train_config.json, log.jsonl, final/ (the model in its
release's own layout, loadable by evaluate.py, probe.py and the release's code), base/ (the initial weights,
when they were randomly initialised), adapter/ (with LoRA) and resume/ (a resumable state, every
save_every steps and on SIGTERM).
"""

import math
import os
import shutil
import sys
from contextlib import nullcontext
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn as nn

import data
import jepa
import lora as loralib
import model as modellib
from harness import guards, run_folder, run_state, runtime
from configurator import PRESETS_DIR, SEED_RANGE, check_ranges, configure as apply_settings, setting_keys
from harness.errors import ConfigError
from harness.outputs import disk_errors, remove_entry, write_json
from training import dry_run as planning
from training.progress import Progress
from training.step import (Source, accumulate, apply_step, build_models, clip_gradients, make_optimizer,
                           micro_batch, resolve_grad_accum)

# -----------------------------------------------------------------------------
# configuration (the paper's aggressive setting, §4.1 and A.10)
# task and model
task = "gsm8k"
data_dir = ""  # local release files; empty = the hub (gsm8k, spider)
model = "GSAI-ML/LLaDA-8B-Base"  # hub id, checkpoint directory, or a model.PRESETS name (random init)
trust_remote_code = False  # run a tokenizer shipped as code beside the checkpoint (Dream's): for sources you trust
chat = "auto"  # chat template: 'auto' (models whose name says Instruct), 'true', 'false'
max_len = 1024  # longer examples are dropped (and counted), never truncated
val_holdout = 0  # > 0: train without these many seeded items of the training split (evaluate.py --split=val)
text_files = ""  # task 'text': comma-separated text files / folders / .jsonl ("text" per row) to pretrain on
split_punctuation = False  # random-init presets: each punctuation character one token (data.train_tokenizer)
# DLLM-JEPA
t_low = jepa.T_LOW
t_high = jepa.T_HIGH
symmetric = False  # the symmetric-view ablation: allows t_high == t_low
random_context_rate = False  # context rate ~ U(0, 1] per sequence instead of t_low (not the paper; tiny preset)
jepa_weight = jepa.JEPA_WEIGHT  # lambda; 0 = the diffusion baseline
shuffled_target = False  # the shuffled-target control, not the method: each example's target embedding is the
#                          previous example's of its micro-batch (jepa.derange), so the JEPA term keeps its size
#                          and gradient path but predicts nothing about its own input
predictor_layers = jepa.PREDICTOR_LAYERS  # k; 0 = no predictor (identity)
ema_decay = jepa.EMA_DECAY
anchor_l2 = 0.0  # lambda_L2 of the L2-to-base anchor ablation (the paper uses 1e-4); 0 = off
# one-GPU mode: LoRA adapters (0 = off: the paper's full fine-tuning); the EMA target is then the frozen
# base plus an EMA of the adapters, and the predictor stays full-rank
lora_rank = 0
lora_alpha = 16.0
lora_dropout = 0.05
lora_targets = "q,k,v,o,gate,up,down"  # attention q/k/v/out, MLP gate/up/down
# optimisation
lr = 1e-5
weight_decay = 0.01  # on matrices only
beta1 = 0.9
beta2 = 0.999
warmup_frac = 0.05  # cosine decay to 0 after a linear warmup over 5% of the steps
grad_clip = 1.0
epochs = 2
batch_size = 2  # per device
grad_accum = 0  # micro-batches per step; 0 = total_batch / (world x batch_size)
total_batch = 32  # the paper's effective batch (8 GPUs x 2 x 2), on any number of GPUs; 0 = use grad_accum
max_steps = 0  # > 0: the schedule's length in optimizer steps, instead of epochs
reduce_every_micro_batch = False  # FSDP2: reduce-scatter the gradients after every micro-batch, not only the
#   last: no full-size fp32 gradient held between micro-batches (about 30 GiB a GPU for LLaDA-8B: --dry_run
#   shows it), for grad_accum times the gradient traffic; the sum is the same up to float rounding
seed = 42
# system
device = "auto"  # auto = cuda if available, else cpu
dtype = "auto"  # compute dtype: auto = bfloat16 on GPU, float32 on CPU (master weights, reductions, optimizer: float32)
activation_checkpointing = True
out_dir = "out"
log_every = 10
save_every = 500  # resumable state every N optimizer steps (0 = only on SIGTERM and at the end; the end's is
#                   deleted once final/ is written whole)
snapshot_every = 0  # > 0: also the weights every N steps, as <out_dir>/snapshots/step<N>/ (a learning curve:
#                     evaluate.py --checkpoint <that folder> --split val scores each)
resume = False  # continue the run in out_dir from its newest complete resumable state
overwrite = False  # replace a run already in out_dir (its final/, resume/, log.jsonl, ... are deleted first)
stop_step = 0  # > 0: stop after this optimizer step, leaving a resumable state (for interrupted runs)
wandb_log = False  # also send log.jsonl's records to Weights & Biases (nanoGPT's convention; needs `pip install wandb`)
wandb_project = "dllm-jepa"
wandb_run_name = ""  # empty: the out_dir's name
dist_timeout = runtime.DIST_TIMEOUT  # seconds a rank waits for the others in a collective
# the dry run: the run these settings launch, planned on fake tensors instead of run (harness/plan.py): memory per
# rank by category, FLOPs per step, time estimates, whether it fits; nothing is trained, downloaded or read
dry_run = False
dry_run_world = 8  # the ranks (GPUs) the plan is for
dry_run_out = ""  # also write the plan here as JSON
dry_run_real = False  # the plan's check: measure the same two steps on real tensors on this launch's own ranks
dry_run_largest_batch = False  # also find the largest per-GPU batch that fits (re-planned at powers of two)
gpu_memory = 80.0  # GiB one GPU holds: the plan says whether the run fits, and if not the nearest setting that does
preset = ""  # NAME: the settings of config/NAME.py (tiny: the CPU path; wide-t: section 4.3; aggressive)
config = ""  # a file of settings (.py of 'key = literal' lines, or .json), read after the preset
# the settings that do not define a run (where it writes, how often it logs and saves, where it runs): a
# resumable state saved under any other different setting belongs to another run (harness/run_state.py)
NOT_IDENTITY = ("out_dir", "log_every", "save_every", "snapshot_every", "resume", "overwrite", "stop_step",
                "dist_timeout", "preset", "config", "device", "activation_checkpointing", "wandb_log", "wandb_project",
                "wandb_run_name", "dry_run", "dry_run_world", "dry_run_out", "dry_run_real", "dry_run_largest_batch",
                "gpu_memory", "trust_remote_code")

MAX_PREDICTOR_LAYERS = 64

RANDOM_INIT = ("tiny", "small")  # model presets trained from random weights, with a tokenizer trained here
CHOICES = {"task": tuple(data.TASKS) + ("text",), "chat": ("auto", "true", "false"), "dtype": tuple(runtime.DTYPES),
           "device": runtime.DEVICES}
KEYS = setting_keys(globals())
# the one line printed where Ctrl-C stops the run at once (harness/runtime.run_main: a second Ctrl-C, or one
# before the loop; the first in the loop finishes its step and saves a resumable state): how to go on
INTERRUPTED = "stopped at once: where a resumable state was saved, continue with --resume=true"


def configure(argv):
    """Apply preset, config file and flags to the module constants; validate before anything is loaded."""
    cfg = apply_settings(globals(), KEYS, argv, PRESETS_DIR)
    validate()
    return cfg


def settings():
    """The run's settings as one object (training/step.py's functions take them so)."""
    return SimpleNamespace(**{k: globals()[k] for k in KEYS})


def validate():
    for key, options in CHOICES.items():
        if globals()[key] not in options:
            raise ConfigError(f"--{key}={globals()[key]!r} is not one of {', '.join(map(repr, options))}")
    if not (0 < t_low <= 1 and 0 < t_high <= 1):
        raise ConfigError(f"masking rates must be in (0, 1]; got t_low={t_low}, t_high={t_high}")
    if t_low >= t_high and not (symmetric and t_low == t_high):
        raise ConfigError(f"t_low={t_low} must be below t_high={t_high} (the context view is the less masked one); "
                          "for the symmetric-view ablation set --symmetric=true and t_high equal to t_low")
    if symmetric and t_low != t_high:
        raise ConfigError(f"--symmetric=true needs t_high equal to t_low (got {t_low}, {t_high})")
    if jepa_weight < 0:
        raise ConfigError(f"jepa_weight (lambda) must be >= 0, got {jepa_weight}")
    if anchor_l2 < 0:
        raise ConfigError(f"anchor_l2 must be >= 0, got {anchor_l2}")
    if shuffled_target and jepa_weight == 0:
        raise ConfigError("--shuffled_target=true needs a JEPA term: set --jepa_weight above 0")
    if lora_rank < 0 or (lora_rank and (lora_alpha <= 0 or not 0 <= lora_dropout < 1)):
        raise ConfigError("LoRA needs lora_rank >= 0, lora_alpha > 0, 0 <= lora_dropout < 1")
    unknown = set(lora_targets.split(",")) - set(loralib.LORA_TARGETS)
    if lora_rank and unknown:
        raise ConfigError(f"unknown lora_targets {sorted(unknown)}; choose from {','.join(loralib.LORA_TARGETS)}")
    if lora_rank and anchor_l2:
        raise ConfigError("the L2-to-base anchor is for full fine-tuning; with LoRA the base does not move")
    # k: each predictor block is one of the model's (8B: 0.2B parameters a block); twice the deepest
    # release's 32 blocks is far past any ablation, and past it a typo builds for hours
    if not 0 <= predictor_layers <= MAX_PREDICTOR_LAYERS:
        raise ConfigError(f"--predictor_layers (k) must be in [0, {MAX_PREDICTOR_LAYERS}], got {predictor_layers}")
    if not 0 <= ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
    check_ranges(globals(), {"seed": SEED_RANGE, "batch_size": (1, None), "max_len": (1, None), "log_every": (1, None),
                             "dry_run_world": (1, None), "gpu_memory": (0.001, None), "weight_decay": (0, None),
                             "beta1": (0, 0.999999), "beta2": (0, 0.999999), "epochs": (1, None),
                             "max_steps": (0, None), "save_every": (0, None), "snapshot_every": (0, None),
                             "stop_step": (0, None), "val_holdout": (0, None), "total_batch": (0, None),
                             "grad_accum": (0, None), "dist_timeout": (1, None)})
    if not total_batch and not grad_accum:
        raise ConfigError("--total_batch and --grad_accum are both 0: set the effective batch or the accumulation")
    if lr <= 0 or not 0 <= warmup_frac < 1 or grad_clip < 0:
        raise ConfigError(f"need lr > 0, 0 <= warmup_frac < 1, grad_clip >= 0 (got {lr}, {warmup_frac}, {grad_clip})")
    if model in modellib.PRESETS and model not in RANDOM_INIT:
        raise ConfigError(f"--model={model} would be a random initialisation without a tokenizer; pass the hub id "
                          f"({', '.join(modellib.HUB_IDS)}) or a checkpoint directory")
    if model == "small" and task != "text":
        raise ConfigError("--model=small starts from random weights: pretrain it with --task=text first "
                          "(replication/replicate.sh base), or fine-tune the committed --model=replication/base")
    if wandb_log:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--wandb_log=true needs the wandb package (pip install wandb), or leave it false") from None
    if task == "text" and not text_files:
        raise ConfigError("--task=text needs --text_files (files or folders, comma-separated; .jsonl: a 'text' per row)")
    if model not in RANDOM_INIT and not os.path.isdir(model) and not (
            model.count("/") == 1 and not model.startswith((".", "/"))):
        raise ConfigError(f"unknown model {model!r}: expected a hub id like {modellib.HUB_IDS[0]}, a checkpoint "
                          f"directory, or one of the presets {', '.join(modellib.PRESETS)}")
    if not out_dir:
        raise ConfigError("--out_dir is empty; name a folder for the run (an empty one would be the current folder)")
    if data_dir and not os.path.isdir(data_dir):
        raise ConfigError(f"data_dir {data_dir} does not exist")
    if not data_dir and task != "text" and data.TASKS[task]["hub"] is None and task != "tiny-regex":
        raise ConfigError(f"task {task} needs --data_dir pointing at the release files: {data.WHERE_TO_GET[task]}")


# -----------------------------------------------------------------------------
# helpers


def lr_at(step, total_steps):
    """Linear warmup over warmup_frac of the steps, then cosine decay to 0 (step counts from 1)."""
    warmup = max(1, int(round(warmup_frac * total_steps)))
    if step <= warmup:
        return lr * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -----------------------------------------------------------------------------
# training


def load_source(documents):
    """The tokenizer and config of --model: a release (hub id or directory), or a random-init preset whose
    tokenizer is trained here: on the text task's documents, or (tiny) on the offline task."""
    if model in RANDOM_INIT:
        model_cfg = modellib.PRESETS[model]
        texts = documents if task == "text" else data.tiny_tokenizer_texts()
        return Source(model_cfg, data.train_tokenizer(texts, model_cfg.vocab_size, split_punctuation), None, None)
    ckpt_dir = modellib.resolve_checkpoint_dir(model)
    release_config = modellib.read_release_config(ckpt_dir)
    model_cfg = modellib.config_from_release(release_config, os.path.join(ckpt_dir, "config.json"))
    return Source(model_cfg, modellib.load_tokenizer(ckpt_dir, model_cfg, trust_remote_code), ckpt_dir, release_config)


def check_derangeable(n_examples, world):
    """The shuffled-target control pairs each example with another of its micro-batch: refuse, before any
    step, a run where some rank's micro-batch would hold one example (the sizes are the same every epoch)."""
    if not shuffled_target:
        return
    smallest = min(len(b) for r in range(world) for b in data.epoch_batches(n_examples, batch_size, world, r))
    if smallest < 2:
        raise ConfigError(f"--shuffled_target=true: {n_examples} examples in micro-batches of --batch_size={batch_size} "
                          f"on {world} rank(s) leave a micro-batch of {smallest}; change --batch_size so that every "
                          "micro-batch holds at least 2 examples")


def main(argv):
    cfg = configure(argv)
    if dry_run:
        return planning.plan_main(settings(), cfg)
    world, rank, dev = runtime.init_distributed(device, dist_timeout)
    distributed, master = world > 1, rank == 0
    log = print if master else (lambda *a, **k: None)
    s = settings()
    saved = resolved_settings(cfg, world)  # the settings as train_config.json keeps them
    if not run_folder.claim(saved, NOT_IDENTITY, master, distributed):
        log(f"{out_dir} is a finished run ({out_dir}/final is in place): nothing to do")
        if master and run_state.remove_all(out_dir):  # a stop between final/ and the states' deletion
            log(f"removed the resumable state left beside {out_dir}/final")
        return runtime.close_distributed(world)
    if master and not resume:  # the marker of a run of train.py, before any other file (harness/run_folder.py)
        write_json(os.path.join(out_dir, "train_config.json"), saved)
    compute_dtype = runtime.resolve_dtype(dtype, dev)
    mesh = None
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(dev.type, (world,))

    # ---- tokenizer and data (before the model: a data error should not cost a model load)
    documents = data.read_documents([p for p in text_files.split(",") if p], "--text_files") if task == "text" \
        else None
    source = load_source(documents)
    examples = training_examples(documents, source.tokenizer, saved["chat"] == "true", log)
    runtime.check_ranks_agree({"settings": runtime.digest(cfg), "data": runtime.digest(examples)}, distributed)
    accum = saved["grad_accum"]
    micro, micro_epoch = data.epoch_batches(len(examples), batch_size, world, rank, seed, 0), 0
    check_derangeable(len(examples), world)
    steps_per_epoch = math.ceil(len(micro) / accum)
    total_steps = max_steps or epochs * steps_per_epoch
    log(f"{task}: {len(examples)} training examples; effective batch {world * batch_size * accum} = {world} rank(s) "
        f"x batch {batch_size} x accum {accum}; {steps_per_epoch} optimizer steps per epoch, {total_steps} in all")

    # ---- models and optimizer
    models = build_models(s, source, dev, compute_dtype, mesh, master)
    online, target = models.online, models.target
    trainable = nn.ModuleDict({"online": online} | ({"predictor": models.predictor} if models.predictor else {}))
    optimizer, params = make_optimizer(s, trainable)
    n_params = sum(p.numel() for p in online.parameters() if not p.requires_grad or not lora_rank)
    if lora_rank:  # a DTensor's numel is the full tensor's
        log(f"LoRA rank {lora_rank}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters")
    log(f"model {model}: {n_params / 1e6:.2f}M parameters; predictor {predictor_layers} layers; "
        f"lambda {jepa_weight}, t_L {'~ U(0, 1] per sequence' if random_context_rate else t_low}, t_H {t_high}")

    # ---- resume, or a fresh log
    identity = run_state.identity(saved, NOT_IDENTITY)
    step = run_state.load(out_dir, trainable, target, optimizer, identity, distributed, log) if resume else 0
    if master:
        run_folder.trim_log(os.path.join(out_dir, "log.jsonl"), step)
        if resume:  # the state was this run's: its settings as now (out_dir, cadence, ...)
            write_json(os.path.join(out_dir, "train_config.json"), saved)
    stop = guards.StopFlag()
    run = SimpleNamespace(models=models, trainable=trainable, optimizer=optimizer, params=params, source=source,
                          identity=identity, dev=dev, distributed=distributed, master=master, log=log)

    # mixed precision: one process autocasts; under torchrun FSDP2's MixedPrecisionPolicy casts instead
    autocast = torch.autocast(dev.type, dtype=compute_dtype) if (not distributed and compute_dtype != torch.float32) \
        else nullcontext()
    progress = Progress(s, cfg, master, world, dev, step, total_steps,
                        runtime.flops_per_token(n_params, jepa=jepa_weight > 0, lora=lora_rank > 0))
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if epoch != micro_epoch:  # the epoch's batch order, computed once per epoch
            micro, micro_epoch = data.epoch_batches(len(examples), batch_size, world, rank, seed, epoch), epoch
        group = micro[step_in_epoch * accum:(step_in_epoch + 1) * accum]
        make_batch = partial(micro_batch, s, examples=examples, eos_id=source.tokenizer.eos_token_id, epoch=epoch, dev=dev)
        sums, tokens = accumulate(s, models, trainable, group, make_batch, source.model_cfg.mask_token_id, autocast)
        grad_norm = clip_gradients(s, models, params)
        stats, stop_now = guards.agree(sums, grad_norm, stop.requested, dev, distributed, world)
        guards.check_finite(step + 1, stats, out_dir)
        step += 1
        current_lr = lr_at(step, total_steps)
        apply_step(s, models, optimizer, current_lr)
        stop_now = stop_now or bool(stop_step and step >= stop_step)
        progress.step(step, epoch, current_lr, tokens, stats, last=stop_now or step == total_steps)
        save_along_the_way(run, step, total_steps, stop_now)
        if stop_now:
            log(f"stopped after step {step}; resume with --resume=true")
            break

    progress.close()
    if step >= total_steps:
        save_model(run, "final")
        if master:
            run_state.remove_all(out_dir)
    runtime.close_distributed(world)


def resolved_settings(cfg, world):
    """The run's settings as train_config.json keeps them and as a resume or a finished run is compared by: the
    constants after flags, with what is decided at launch filled in (chat from the model's name, the world
    size, the accumulation that total_batch implies): one dict, built once."""
    return cfg | {"chat": "true" if data.uses_chat(chat, model) else "false", "world_size": world,
                  "grad_accum": resolve_grad_accum(settings(), world)}


def save_along_the_way(run, step, total_steps, stop_now):
    """After an optimizer step: the weights checked before anything is saved, a snapshot every snapshot_every
    steps, a resumable state every save_every steps, at a stop, and at the last step where the disk has
    room for it and final/ both."""
    snapshot = snapshot_every and step % snapshot_every == 0
    periodic = save_every and step % save_every == 0
    if not (stop_now or periodic or snapshot or step == total_steps):
        return
    guards.check_weights(step, run.params, run.dev, run.distributed, out_dir, lr)
    if snapshot and step < total_steps:
        save_model(run, os.path.join("snapshots", f"step{step}"))
    if stop_now or periodic or (step == total_steps and last_state_fits(run)):
        run_state.save(out_dir, run.trainable, run.models.target, run.optimizer, step, run.identity, run.distributed)


def training_examples(documents, tokenizer, use_chat, log):
    """The tokenized training examples: --task text's documents packed into chunks of max_len, else the task's
    training split (less the items --val_holdout keeps for evaluate.py's --split=val)."""
    if task == "text":
        examples = data.pack(documents, tokenizer, max_len)
        log(f"text: {len(documents)} documents, {sum(len(e['response_ids']) for e in examples):,} tokens "
            f"(EOS after each document), {len(examples)} chunks of up to {max_len}")
        return examples
    items = data.load_task(task, "train", data_dir or None)
    if val_holdout:
        items = data.holdout_split(items, val_holdout, "train")
    return data.tokenize_task(task, items, tokenizer, max_len, chat=use_chat, log=log)


def last_state_fits(run):
    """Whether to write a state at the last step, before the final model: a kill during the final save then
    loses nothing. Only where the disk holds that state and the final model after it (run_state.
    last_state_room): the end of a run never needs more room than the final model alone."""
    fits, needs, free = run_state.last_state_room(out_dir, run.trainable, run.models.target, run.optimizer,
                                                  final_bytes(run.models.online), run.distributed)
    if not fits:
        run.log(f"no room for a last resumable state before final/ ({needs} bytes needed, {free} free): writing "
                f"final/ directly")
    return fits


def final_bytes(online):
    """The bytes final/ takes: every parameter, full size (not a rank's shard), in the dtype it is saved in."""
    return sum(p.numel() * p.element_size() for p in online.parameters())


def save_model(run, name):
    """<out_dir>/<name>/ in the release's own layout: 'final' at the end (with LoRA also adapter/, and final/
    is the merge), 'snapshots/step<N>' along the way. Written as <name>.tmp/ and renamed, so the folder on
    disk is always whole: final/ marks a finished run."""
    online, source = run.models.online, run.source
    state = runtime.full_state_dict(online, run.distributed)
    if run.master:
        folder = os.path.join(out_dir, name)
        with disk_errors(folder, lambda: run_state.resume_advice(out_dir, final_bytes(online))):
            if lora_rank:
                if name == "final":
                    loralib.save_adapters(state, online.lora, os.path.join(out_dir, "adapter"))
                state = loralib.merge_lora(state, online.lora)
            remove_entry(folder + ".tmp")  # a kill's leftover; a link is removed, never written through
            modellib.save_checkpoint(state, source.model_cfg, folder + ".tmp", tokenizer=source.tokenizer,
                                     source_config=source.release_config, source_dir=source.ckpt_dir)
            if name != "final":  # a snapshot carries its run's settings (final/ finds them beside it)
                shutil.copy(os.path.join(out_dir, "train_config.json"), folder + ".tmp")
            remove_entry(folder)  # a snapshot rewritten after a resume
            os.replace(folder + ".tmp", folder)
        run.log(f"saved {folder}")


if __name__ == "__main__":
    runtime.run_main("train.py", main, sys.argv[1:], lambda: dist_timeout, INTERRUPTED)
