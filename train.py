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

import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import data
import jepa
import lora as loralib
import model as modellib
from harness import plan, run_folder, run_state
from harness import runtime
from configurator import check_ranges, configure as apply_settings, setting_keys
from harness.errors import ConfigError
from harness.outputs import disk_errors

# -----------------------------------------------------------------------------
# configuration (the paper's aggressive setting, §4.1 and A.10)
# task and model
task = "gsm8k"
data_dir = ""  # local release files; empty = the hub (gsm8k, spider)
model = "GSAI-ML/LLaDA-8B-Base"  # hub id, checkpoint directory, or a model.PRESETS name (random init)
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
gpu_memory = 80.0  # GB one GPU holds: the plan says whether the run fits, and if not the nearest setting that does
preset = ""
config = ""
# the settings that do not define a run (where it writes, how often it logs and saves, where it runs): a
# resumable state saved under any other different setting belongs to another run (harness/run_state.py)
NOT_IDENTITY = ("out_dir", "log_every", "save_every", "snapshot_every", "resume", "overwrite", "stop_step",
                "dist_timeout", "preset", "config", "device", "activation_checkpointing", "wandb_log", "wandb_project",
                "wandb_run_name", "dry_run", "dry_run_world", "dry_run_out", "dry_run_real", "dry_run_largest_batch",
                "gpu_memory")

PRESETS = {
    "aggressive": dict(t_low=0.2, t_high=0.7, lr=1e-5),  # the main task table
    "wide-t": dict(t_low=0.1, t_high=0.9, lr=1.4e-6),  # the preservation experiment (§4.3)
    "tiny": dict(task="tiny-regex", model="tiny", device="cpu", dtype="float32", max_len=128, lr=2e-3,
                 random_context_rate=True,
                 batch_size=16, grad_accum=1, total_batch=0, epochs=30, activation_checkpointing=False, predictor_layers=2,
                 ema_decay=0.99, log_every=10, save_every=0, seed=0, out_dir="out-tiny"),
}
RANDOM_INIT = ("tiny", "small")  # model presets trained from random weights, with a tokenizer trained here
CHOICES = {"task": tuple(data.TASKS) + ("text",), "chat": ("auto", "true", "false"), "dtype": tuple(runtime.DTYPES),
           "device": runtime.DEVICES}
KEYS = setting_keys(globals())


def configure(argv):
    """Apply preset, config file and flags to the module constants; validate before anything is loaded."""
    cfg = apply_settings(globals(), KEYS, argv, PRESETS)
    validate()
    return cfg


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
    if predictor_layers < 0:
        raise ConfigError(f"predictor_layers (k) must be >= 0, got {predictor_layers}")
    if not 0 <= ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
    for key in ("batch_size", "max_len", "log_every"):
        if globals()[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {globals()[key]}")
    check_ranges(globals(), {"dry_run_world": (1, None), "gpu_memory": (0.001, None)})
    check_ranges(globals(), {"weight_decay": (0, None), "beta1": (0, 0.999999), "beta2": (0, 0.999999),
                             "epochs": (1, None), "max_steps": (0, None), "save_every": (0, None),
                             "snapshot_every": (0, None), "stop_step": (0, None), "val_holdout": (0, None),
                             "total_batch": (0, None), "grad_accum": (0, None), "dist_timeout": (1, None)})
    if not total_batch and not grad_accum:
        raise ConfigError("--total_batch and --grad_accum are both 0: set the effective batch or the accumulation")
    if dist_timeout <= 0:
        raise ConfigError(f"--dist_timeout must be > 0 seconds, got {dist_timeout}")
    for key in ("epochs", "max_steps", "save_every", "stop_step", "grad_accum", "total_batch", "val_holdout"):
        if globals()[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {globals()[key]}")
    if epochs == 0 and max_steps == 0:
        raise ConfigError("nothing to train: epochs and max_steps are both 0")
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


class Diverged(runtime.RunError):
    pass


WATCHED = ("loss", "diffusion_loss", "jepa_loss", "grad_norm")


def check_finite(step, stats):
    """Stop before the optimizer applies a NaN or inf: the weights and the last resumable state stay good."""
    bad = {k: v for k, v in stats.items() if k in WATCHED and not math.isfinite(v)}
    if bad:
        raise Diverged(f"step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}; the run stopped "
                       f"before this update and wrote no final/. {diverged_advice()}")


def diverged_advice():
    """What a diverged run leaves, and what to do: a resume keeps the run's settings, so a lower --lr is a
    new run."""
    state = "its last resumable state is in resume/" if run_state.has_state(out_dir) else "it has no resumable state"
    return (f"In {out_dir}, {state}; to try a lower --lr, start a new run (--overwrite=true or another --out_dir): "
            f"--resume keeps the run's settings")


def check_weights(step, params, dev, distributed):
    """Stop before non-finite weights are written anywhere (final/, a snapshot, resume/): an update can
    overflow where the loss and the gradient were finite (--lr 1e39 is finite as a double, inf in float32).
    Run only before a save, so the training step pays nothing."""
    bad = torch.zeros((), device=dev)
    for p in params:
        local = p.to_local() if isinstance(p, DTensor) else p
        if not torch.isfinite(local).all():
            bad += 1
            break
    if distributed:
        dist.all_reduce(bad)
    if bad.item():
        raise Diverged(f"step {step}: the update made the weights non-finite (--lr={lr:g} too high?); nothing was "
                       f"written for it. {diverged_advice()}")


class StopFlag:
    """Set by SIGTERM or SIGINT (Ctrl-C): the loop finishes the optimizer step, saves a resumable state and
    exits. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)

    def request(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def agree(sums, grad_norm, stop, dev, distributed, world):
    """The one sync of a step: every rank gets the mean of the logged numbers, the gradient norm, and whether
    any rank wants to stop."""
    keys = sorted(sums)
    packed = torch.stack([sums[k] for k in keys] + [grad_norm.float().reshape(()).to(dev),
                                                    torch.tensor(float(stop), device=dev)]).to(dev)
    if distributed:
        flag = packed[-1:].clone()
        dist.all_reduce(packed)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        packed = torch.cat([packed[:-1] / world, flag])
    values = packed.tolist()
    return dict(zip(keys + ["grad_norm"], values[:-1])), values[-1] > 0


class Source(NamedTuple):
    """What the run starts from: the model's config, its tokenizer, and the release it came from."""
    model_cfg: modellib.ModelConfig
    tokenizer: object
    ckpt_dir: Optional[str]  # None: random initialisation (the tiny preset)
    release_config: Optional[dict]


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
    return Source(model_cfg, modellib.load_tokenizer(ckpt_dir, model_cfg), ckpt_dir, release_config)


def resolve_grad_accum(world):
    """Micro-batches per optimizer step. --total_batch (the paper's 32) fixes the effective batch on any
    number of ranks: accumulation = total_batch / (world x batch_size), which must divide evenly; with
    --total_batch 0, --grad_accum is used as given."""
    if not total_batch:
        return grad_accum
    per_step = world * batch_size
    if total_batch % per_step:
        raise ConfigError(f"--total_batch={total_batch} is not a multiple of {world} rank(s) x --batch_size="
                          f"{batch_size}; change one of them (or pass --total_batch=0 and --grad_accum)")
    if grad_accum and grad_accum != total_batch // per_step:
        raise ConfigError(f"--grad_accum={grad_accum} gives an effective batch of {per_step * grad_accum}, not "
                          f"--total_batch={total_batch}; pass one of them (the other 0)")
    return total_batch // per_step


class Models(NamedTuple):
    online: nn.Module  # f_theta (with LoRA adapters when lora_rank > 0)
    target: Optional[nn.Module]  # f_theta', the EMA copy (None for the baseline)
    predictor: Optional[nn.Module]  # g_phi (None for the baseline)
    anchor_base: Optional[list]  # theta_base for the L2 anchor (None unless anchor_l2 > 0)


def build_models(source, dev, compute_dtype, mesh, master):
    """The online model, EMA target, predictor and anchor copy, on every path a run can take:

      path                  online weights                                  EMA target
      tiny (random init)    seeded init on every rank, saved as base/       a copy (sharded alike under torchrun)
      one process           from_pretrained in fp32 (LoRA: base in the      a copy (LoRA: AdapterEMATarget, an
                            compute dtype, adapters fp32)                   EMA of the adapters only)
      torchrun, FSDP2       built on meta, sharded per block, filled from   a copy made before sharding, sharded
                            rank 0's copy (broadcast_from_rank0)            and filled alike (LoRA: adapter EMA)

    Every random draw is seeded so that all ranks hold shards of the same full tensors as one process."""
    lora = dict(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets.split(","))

    def with_lora(net):  # seeded, so every rank (and rank 0's full copy) draws the same adapters
        if lora_rank:
            torch.manual_seed(seed + 1)
            loralib.add_lora(net, **lora)
        return net

    torch.manual_seed(seed)  # random init draws the same full tensors on every rank, as in one process
    if source.ckpt_dir is None:  # random init; the dry run's shapes-only source (no tokenizer) saves nothing
        # as from a checkpoint below: with LoRA the base never moves, so it is held in the compute dtype
        with default_dtype(compute_dtype if lora_rank else torch.float32):
            online = on_device(modellib.Transformer(source.model_cfg), dev)
        if master and source.tokenizer is not None:
            online.save_pretrained(os.path.join(out_dir, "base"), tokenizer=source.tokenizer)
    elif mesh is not None:  # one host copy of the weights (rank 0's), not one per rank
        with torch.device("meta"):
            online = modellib.Transformer(source.model_cfg)
    else:  # full fine-tuning keeps float32 master weights; with LoRA the base never moves, so it is held in the
        # compute dtype (LLaDA-8B in bf16: 16 GB instead of 32) and only the adapters are float32
        online = modellib.from_pretrained(source.ckpt_dir, dtype=compute_dtype if lora_rank else torch.float32,
                                          device=dev)
    with_lora(online)
    online.activation_checkpointing = activation_checkpointing
    # full fine-tuning: the EMA copy is made before sharding; LoRA: the adapter EMA after loading, below
    target = jepa.make_target_encoder(online) if jepa_weight > 0 and not lora_rank else None
    torch.manual_seed(seed + 2)  # the predictor's own stream: the same weights whatever was drawn before
    predictor = on_device(jepa.Predictor(source.model_cfg, predictor_layers), dev) if jepa_weight > 0 else None
    if mesh is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy
        mp_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for module in (online, target, predictor):
            if module is not None and len(module.blocks) > 0:
                runtime.shard(module, mesh, mp_policy)
        if source.ckpt_dir is not None:
            full_init = with_lora(modellib.from_pretrained(source.ckpt_dir, dtype=torch.float32)).state_dict() \
                if master else None
            for module in (online, target):
                if module is not None:
                    module.to_empty(device=dev)
                    runtime.load_full_state(module, full_init)
            del full_init
            if target is not None:
                target.requires_grad_(False)
    if jepa_weight > 0 and lora_rank:
        target = jepa.make_target_encoder(online)
    return Models(online, target, predictor, jepa.snapshot_parameters(online) if anchor_l2 > 0 else None)


@contextmanager
def default_dtype(dt):
    """Parameters created in the block get dtype dt."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def on_device(module, dev):
    """A module built on the CPU, moved to dev; a move to the CPU is skipped (a no-op for real tensors, and
    the dry run's FakeTensors cannot be moved in place)."""
    return module if dev.type == "cpu" else module.to(dev)


def make_optimizer(trainable):
    """AdamW over what trains (with LoRA: the adapters and the predictor), weight decay on matrices only;
    fused: one kernel per step, on plain tensors and FSDP2's DTensors alike."""
    params = [p for p in trainable.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), fused=True), params


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


def micro_batch(indices, examples, eos_id, epoch, dev):
    """One micro-batch: the collated examples on the device and their views' noise (batch, ViewNoise)."""
    batch = {k: v.to(dev) for k, v in data.collate([examples[j] for j in indices], eos_id).items()}
    return batch, jepa.view_noise(indices, batch["input_ids"].shape[1], jepa.epoch_stream(seed, epoch), max_len)


def accumulate(models, trainable, group, make_batch, mask_token_id, autocast):
    """Forward and backward over one optimizer step's micro-batches (make_batch(indices) -> (batch, noise)):
    the gradients sum to those of the mean loss. Returns the mean of each logged number (tensors, no sync)
    and the tokens seen."""
    sums, tokens = {}, 0
    for i, indices in enumerate(group):
        for m in trainable.values():
            if isinstance(m, FSDPModule):  # reduce-scatter the gradients after the last micro-batch (or each)
                m.set_requires_gradient_sync(reduce_every_micro_batch or i == len(group) - 1)
        batch, noise = make_batch(indices)
        with autocast:
            res = jepa.objective(models.online, batch, mask_token_id, t_low=t_low, t_high=t_high,
                                 jepa_weight=jepa_weight, predictor=models.predictor,
                                 target_encoder=models.target, noise=noise, random_context_rate=random_context_rate,
                                 shuffled_target=shuffled_target)
        (res.loss / len(group)).backward()
        for k, v in {**res.stats, "loss": res.loss}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / len(group)
        tokens += batch["input_ids"].numel()
    return sums, tokens


def clip_gradients(models, params):
    """The L2 anchor's gradient (when on), then clipping; returns the gradient norm before clipping."""
    if models.anchor_base is not None:
        jepa.add_anchor_gradient(models.online, models.anchor_base, anchor_l2)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    return grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm


def apply_step(models, optimizer, current_lr):
    """The optimizer step at current_lr, then the EMA target's update."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = current_lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if models.target is not None:
        jepa.ema_update(models.target, models.online, ema_decay)


def main(argv):
    cfg = configure(argv)
    if dry_run:
        return plan_main(cfg)
    world, rank, dev = runtime.init_distributed(device, dist_timeout)
    distributed, master = world > 1, rank == 0
    log = print if master else (lambda *a, **k: None)
    accum = resolve_grad_accum(world)
    if not run_folder.claim(cfg | {"grad_accum": accum}, NOT_IDENTITY, master, distributed):  # as saved: resolved
        log(f"{out_dir} is a finished run ({out_dir}/final is in place): nothing to do")
        runtime.close_distributed(world)
        return
    compute_dtype = runtime.resolve_dtype(dtype, dev)
    mesh = None
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(dev.type, (world,))

    # ---- tokenizer and data (before the model: a data error should not cost a model load)
    documents = data.read_documents([p for p in text_files.split(",") if p]) if task == "text" else None
    source = load_source(documents)
    use_chat = data.uses_chat(chat, model)
    if task == "text":
        examples = data.pack(documents, source.tokenizer, max_len)
        log(f"text: {len(documents)} documents, {sum(len(e['response_ids']) for e in examples):,} tokens "
            f"(EOS after each document), {len(examples)} chunks of up to {max_len}")
    else:
        items = data.load_task(task, "train", data_dir or None)
        if val_holdout:  # the rest of the training split; the held-out items are evaluate.py's --split=val
            items = data.holdout_split(items, val_holdout, "train")
        examples = data.tokenize_task(task, items, source.tokenizer, max_len, chat=use_chat, log=log)
    runtime.check_ranks_agree({"settings": runtime.digest(cfg), "data": runtime.digest(examples)}, distributed)
    micro, micro_epoch = data.epoch_batches(len(examples), batch_size, world, rank, seed, 0), 0
    check_derangeable(len(examples), world)
    steps_per_epoch = math.ceil(len(micro) / accum)
    total_steps = max_steps or epochs * steps_per_epoch
    log(f"{task}: {len(examples)} training examples; effective batch {world * batch_size * accum} = {world} rank(s) "
        f"x batch {batch_size} x accum {accum}; {steps_per_epoch} optimizer steps per epoch, {total_steps} in all")

    # ---- models and optimizer
    models = build_models(source, dev, compute_dtype, mesh, master)
    online, target = models.online, models.target
    trainable = nn.ModuleDict({"online": online} | ({"predictor": models.predictor} if models.predictor else {}))
    optimizer, params = make_optimizer(trainable)
    n_params = sum(p.numel() for p in online.parameters() if not p.requires_grad or not lora_rank)
    model_flops = runtime.flops_per_token(n_params, jepa=jepa_weight > 0, lora=lora_rank > 0)
    if lora_rank:  # a DTensor's numel is the full tensor's
        log(f"LoRA rank {lora_rank}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters")
    log(f"model {model}: {n_params / 1e6:.2f}M parameters; predictor {predictor_layers} layers; "
        f"lambda {jepa_weight}, t_L {t_low}, t_H {t_high}")

    # ---- resume, or a fresh log
    identity = run_state.identity(cfg | {"grad_accum": accum}, world, NOT_IDENTITY)
    step = run_state.load(out_dir, trainable, target, optimizer, identity, distributed, log) if resume else 0
    if master:
        run_folder.trim_log(os.path.join(out_dir, "log.jsonl"), step)
        with open(os.path.join(out_dir, "train_config.json"), "w") as f:  # 'chat' resolved, for evaluate.py
            json.dump(cfg | {"chat": "true" if use_chat else "false", "world_size": world, "grad_accum": accum},
                      f, indent=2)
    stop = StopFlag()

    # mixed precision: one process autocasts; under torchrun FSDP2's MixedPrecisionPolicy casts instead
    autocast = torch.autocast(dev.type, dtype=compute_dtype) if (not distributed and compute_dtype != torch.float32) \
        else nullcontext()
    peak = runtime.peak_flops(dev)
    log_file = open(os.path.join(out_dir, "log.jsonl"), "a") if master else None
    wandb_run = start_wandb(cfg) if master and wandb_log else None
    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=step, disable=not master, desc="train", dynamic_ncols=True)

    t0, tokens_since = time.time(), 0
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if epoch != micro_epoch:  # the epoch's batch order, computed once per epoch
            micro, micro_epoch = data.epoch_batches(len(examples), batch_size, world, rank, seed, epoch), epoch
        group = micro[step_in_epoch * accum:(step_in_epoch + 1) * accum]
        make_batch = partial(micro_batch, examples=examples, eos_id=source.tokenizer.eos_token_id, epoch=epoch, dev=dev)
        sums, tokens = accumulate(models, trainable, group, make_batch, source.model_cfg.mask_token_id, autocast)
        tokens_since += tokens
        grad_norm = clip_gradients(models, params)
        stats, stop_now = agree(sums, grad_norm, stop.requested, dev, distributed, world)
        check_finite(step + 1, stats)
        step += 1
        current_lr = lr_at(step, total_steps)
        apply_step(models, optimizer, current_lr)
        stop_now = stop_now or bool(stop_step and step >= stop_step)
        bar.update(1)
        if step % log_every == 0 or step == total_steps or stop_now:
            tps = tokens_since * world / max(time.time() - t0, 1e-9)
            record = {"step": step, "epoch": epoch, "lr": current_lr, "tokens_per_s": tps,
                      "mfu": (tps * model_flops / (peak * world)) if peak else None, **stats}
            if master:
                with disk_errors(log_file.name):
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if wandb_run is not None:
                    wandb_run.log(record, step=step)
                bar.set_postfix(l_diff=f"{stats['diffusion_loss']:.3f}", l_jepa=f"{stats.get('jepa_loss', 0.0):.3f}",
                                lr=f"{current_lr:.2e}")
            t0, tokens_since = time.time(), 0
        saving = stop_now or step == total_steps or (save_every and step % save_every == 0) or \
            (snapshot_every and step % snapshot_every == 0)
        if saving:
            check_weights(step, params, dev, distributed)
        if snapshot_every and step % snapshot_every == 0 and step < total_steps:
            save_model(online, source, distributed, master, log, os.path.join("snapshots", f"step{step}"))
        if stop_now or step == total_steps or (save_every and step % save_every == 0):
            # at the last step too: a kill or a full disk during the final save then loses nothing
            run_state.save(out_dir, trainable, target, optimizer, step, identity, distributed)
        if stop_now:
            log(f"stopped after step {step}; resume with --resume=true")
            break

    bar.close()
    if step >= total_steps:
        save_model(online, source, distributed, master, log, "final")
        if master:  # final/ is whole: the last state has done its job (an 8B one is large)
            for name in run_state.NAMES:
                run_state.remove_state(os.path.join(out_dir, name))
    if log_file:
        log_file.close()
    if wandb_run is not None:
        wandb_run.finish()
    runtime.close_distributed(world)


def start_wandb(cfg):
    """A Weights & Biases run that receives the same records as log.jsonl (resumed runs continue the same
    wandb run: its id is the out_dir's name, so a --resume appends)."""
    import wandb
    name = wandb_run_name or os.path.basename(os.path.normpath(out_dir))
    return wandb.init(project=wandb_project, name=name, id=name, resume="allow", config=cfg,
                      dir=out_dir)


def save_model(online, source, distributed, master, log, name):
    """<out_dir>/<name>/ in the release's own layout: 'final' at the end (with LoRA also adapter/, and final/
    is the merge), 'snapshots/step<N>' along the way. Written as <name>.tmp/ and renamed, so the folder on
    disk is always whole: final/ marks a finished run."""
    state = runtime.full_state_dict(online, distributed)
    if master:
        folder = os.path.join(out_dir, name)
        with disk_errors(folder):
            if lora_rank:
                if name == "final":
                    loralib.save_adapters(state, online.lora, os.path.join(out_dir, "adapter"))
                state = loralib.merge_lora(state, online.lora)
            shutil.rmtree(folder + ".tmp", ignore_errors=True)
            modellib.save_checkpoint(state, source.model_cfg, folder + ".tmp", tokenizer=source.tokenizer,
                                     source_config=source.release_config, source_dir=source.ckpt_dir)
            if name != "final":  # a snapshot carries its run's settings (final/ finds them beside it)
                shutil.copy(os.path.join(out_dir, "train_config.json"), folder + ".tmp")
            shutil.rmtree(folder, ignore_errors=True)  # a snapshot rewritten after a resume
            os.replace(folder + ".tmp", folder)
        log(f"saved {folder}")


# -----------------------------------------------------------------------------
# the dry run: the run these settings launch, planned on fake tensors (harness/plan.py)

def plan_main(cfg):
    """--dry_run: plan the run, print the plan (and the nearest setting that fits when it does not), write
    it as JSON to --dry_run_out."""
    model_cfg, origin = plan_model_config()
    world = dry_run_world
    found = plan_once(model_cfg, world)
    if dry_run_real and found is None:  # a rank other than 0 of the check
        return
    report = {"settings": cfg, "model_config_from": origin, "plan": found}
    if not found["fits"] and not dry_run_real:
        report["nearest_fit"] = fit_advice(model_cfg, world)
    if dry_run_largest_batch and not dry_run_real:
        report["largest_batch"] = largest_batch(model_cfg, world)
    plan.print_plan(report)
    if dry_run_out:
        from harness.outputs import write_json
        write_json(dry_run_out, report)
        print(f"wrote {dry_run_out}")


def plan_model_config():
    """(ModelConfig, where it came from): a model.PRESETS name; a checkpoint directory's config.json or the
    hub cache's; else, offline, the preset of the release's shape (the network is never asked)."""
    if model in modellib.PRESETS:
        return modellib.PRESETS[model], f"model.PRESETS[{model!r}]"
    path = os.path.join(modellib.resolve_checkpoint_dir(model), "config.json") if os.path.isdir(model) else None
    if path is None:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model, "config.json")
        path = cached if isinstance(cached, str) else None
    if path is not None:
        return modellib.config_from_release(modellib.read_release_config(os.path.dirname(path)), path), path
    shape = "dream-7b" if "dream" in model.lower() else "llada-8b" if "llada" in model.lower() else None
    if shape is None:
        raise ConfigError(f"--dry_run: no config.json for --model={model} here, and its name matches no preset; "
                          f"pass a checkpoint directory or one of {', '.join(modellib.PRESETS)}")
    return modellib.PRESETS[shape], f"model.PRESETS[{shape!r}]: no local copy of {model}'s config.json (offline)"


def plan_once(model_cfg, world):
    """Two optimizer steps of this configuration on `world` fake ranks (with --dry_run_real, on this launch's
    real ranks and tensors), measured on rank 0: memory by category, FLOPs, estimates. None on other ranks."""
    if dry_run_real:
        world, rank, dev = runtime.init_distributed("cpu", dist_timeout)
        from torch.distributed.device_mesh import init_device_mesh
        mesh, mode = (init_device_mesh("cpu", (world,)) if world > 1 else None), None
    else:
        mesh, mode, rank, dev = plan.fake_world(world), plan.fake_mode(), 0, torch.device("cpu")
    compute = torch.bfloat16 if dtype == "auto" else runtime.DTYPES[dtype]  # a GPU run's default: bfloat16
    accum = resolve_grad_accum(world)
    examples = plan.planned_examples(batch_size * accum, max_len, model_cfg.vocab_size)
    group = [list(range(i * batch_size, (i + 1) * batch_size)) for i in range(accum)]
    with mode or nullcontext():
        models = build_models(Source(model_cfg, None, None, None), dev, compute, mesh, master=False)
        trainable = nn.ModuleDict({"online": models.online} | ({"predictor": models.predictor} if models.predictor else {}))
        optimizer, params = make_optimizer(trainable)
        autocast = torch.autocast("cpu", dtype=compute) if world == 1 and compute != torch.float32 else nullcontext()

        def make_batch(indices):
            with plan.real_values():
                batch = micro_batch(indices, examples, model_cfg.eos_token_id, 0, dev)
            return plan.constant(mode, batch)

        tracked = models._replace(target=plan.trackable(models.target))  # the same computation

        def step():
            accumulate(tracked, trainable, group, make_batch, model_cfg.mask_token_id, autocast)
            clip_gradients(models, params)
            apply_step(models, optimizer, lr)

        found = plan.measure(step, models.online, optimizer, {"EMA target": tracked.target, "predictor": models.predictor})
        with plan.real_values():  # the LM head's positions, for the count by hand: the same views again
            found["masked_positions"] = [masked_count(micro_batch(i, examples, model_cfg.eos_token_id, 0, dev),
                                                      model_cfg.mask_token_id) for i in group]
    if dry_run_real:
        runtime.close_distributed(world)
        if rank != 0:
            return None
    return plan_summary(found, models, model_cfg, world, accum)


def masked_count(batch_and_noise, mask_token_id):
    """How many positions of a micro-batch the context view masks (where the LM head runs)."""
    batch, noise = batch_and_noise
    rate = (1.0 - noise.rate) if random_context_rate else t_low
    return int(jepa.mask_view(batch["input_ids"], batch["maskable"], rate, mask_token_id, noise.context)[1].sum())


def plan_summary(found, models, model_cfg, world, accum):
    """The plan's numbers from the measurement: the EMA target's and predictor's own bytes, FLOPs counted and
    by hand, tokens per step, the estimates, and whether it fits --gpu_memory."""
    tokens = world * batch_size * accum * max_len
    analytic = plan.analytic_step_flops(model_cfg, found["masked_positions"], batch_size, max_len, jepa_weight > 0,
                                        activation_checkpointing, predictor_layers,
                                        (lora_rank, lora_targets.split(",")) if lora_rank else None)
    steps_per_epoch = math.ceil(plan.TRAIN_SIZES.get(task, 0) / (world * batch_size * accum)) if task in plan.TRAIN_SIZES else 0
    need = found["peak_total"] / 2 ** 30 + plan.RESERVE_GIB
    return {**found, "world": world, "grad_accum": accum, "batch_size": batch_size, "max_len": max_len,
            "activation_checkpointing": activation_checkpointing, "lora_rank": lora_rank,
            "analytic_flops": analytic, "tokens_per_step": tokens,
            "flops_per_token": found["flops"] * world / tokens, "steps_per_epoch": steps_per_epoch,
            "estimates": plan.estimates(found["flops"], tokens, steps_per_epoch), "needs_gib": need,
            "fits": need <= gpu_memory}


@contextmanager
def overridden(**values):
    """These settings changed for the block (the fit advice re-plans under them), then restored."""
    saved = {k: globals()[k] for k in values}
    globals().update(values)
    try:
        yield
    finally:
        globals().update(saved)


def fit_advice(model_cfg, world):
    """The nearest setting that fits --gpu_memory: the first of plan.fit_candidates whose plan fits, as
    {'settings', 'needs_gib'}, or {'none': ...}. A candidate whose ranks and batch do not divide
    --total_batch is skipped, and LoRA where the L2 anchor is on."""
    candidates = plan.fit_candidates(world, batch_size, activation_checkpointing,
                                     resolve_grad_accum(world) > 1 and not reduce_every_micro_batch, lora_rank)
    for change in candidates:
        ranks = change.get("dry_run_world", world)
        if total_batch and total_batch % (ranks * change.get("batch_size", batch_size)):
            continue
        if "lora_rank" in change and anchor_l2:  # the L2 anchor is for full fine-tuning
            continue
        with overridden(**change):
            found = plan_once(model_cfg, ranks)
        if found["fits"]:
            return {"settings": change, "needs_gib": found["needs_gib"]}
    return {"none": f"no setting tried fits {gpu_memory:g} GiB: {', '.join(map(str, candidates))}"}


def largest_batch(model_cfg, world):
    """The largest per-GPU batch that fits --gpu_memory among 1, 2, 4, ..., each planned as one micro-batch a
    step (accumulation 1, so the effective batch is ranks x batch), as {'batch_size', 'needs_gib'}; batch_size
    0 when even 1 does not fit. Memory grows with the batch, so the doubling stops at the first that fails."""
    best = {"batch_size": 0, "needs_gib": None}
    b = 1
    while True:
        with overridden(batch_size=b, total_batch=0, grad_accum=1):
            found = plan_once(model_cfg, world)
        if not found["fits"]:
            return best
        best, b = {"batch_size": b, "needs_gib": found["needs_gib"]}, 2 * b


if __name__ == "__main__":
    runtime.run_main("train.py", main, sys.argv[1:], lambda: dist_timeout)
