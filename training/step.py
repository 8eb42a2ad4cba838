"""
One optimizer step of train.py, and what it is built from: the models (online, EMA target, predictor, anchor
copy) on every path a run can take, the optimizer, a micro-batch with its views' noise, the accumulation of
the micro-batches' gradients, clipping, the update and the EMA. train.py runs it on data; its dry run
(training/dry_run.py) runs the same functions on fake tensors, so that what is planned is what is trained.

  settings s (train.py's constants after flags) --build_models--> Models(online f_theta, target f_theta',
                                                                   predictor g_phi, anchor_base)
  a step's micro-batches --accumulate--> per micro-batch: jepa.objective (eq. 7: L_diff + lambda L_JEPA),
                                         backward of loss / n_micro (the gradients of the mean loss)
  --clip_gradients--> the L2 anchor's gradient (an ablation), clip to grad_clip: the norm before clipping
  --apply_step--> AdamW at the step's lr; then the EMA: theta' <- tau theta' + (1 - tau) theta

Every function takes the run's settings as `s` (an object with train.py's setting names as attributes).
"""

import os
from contextlib import contextmanager
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import data
import jepa
import lora as loralib
import model as modellib
from harness import runtime
from harness.errors import ConfigError


class Source(NamedTuple):
    """What the run starts from: the model's config, its tokenizer, and the release it came from."""
    model_cfg: modellib.ModelConfig
    tokenizer: object
    ckpt_dir: Optional[str]  # None: random initialisation (the tiny preset)
    release_config: Optional[dict]


def resolve_grad_accum(s, world):
    """Micro-batches per optimizer step. --total_batch (the paper's 32) fixes the effective batch on any
    number of ranks: accumulation = total_batch / (world x batch_size), which must divide evenly; with
    --total_batch 0, --grad_accum is used as given."""
    if not s.total_batch:
        return s.grad_accum
    per_step = world * s.batch_size
    if s.total_batch % per_step:
        raise ConfigError(f"--total_batch={s.total_batch} is not a multiple of {world} rank(s) x --batch_size="
                          f"{s.batch_size}; change one of them (or pass --total_batch=0 and --grad_accum)")
    if s.grad_accum and s.grad_accum != s.total_batch // per_step:
        raise ConfigError(f"--grad_accum={s.grad_accum} gives an effective batch of {per_step * s.grad_accum}, not "
                          f"--total_batch={s.total_batch}; pass one of them (the other 0)")
    return s.total_batch // per_step


class Models(NamedTuple):
    online: nn.Module  # f_theta (with LoRA adapters when lora_rank > 0)
    target: Optional[nn.Module]  # f_theta', the EMA copy (None for the baseline)
    predictor: Optional[nn.Module]  # g_phi (None for the baseline)
    anchor_base: Optional[list]  # theta_base for the L2 anchor (None unless anchor_l2 > 0)


def build_models(s, source, dev, compute_dtype, mesh, master):
    """The online model, EMA target, predictor and anchor copy, on every path a run can take:

      path                  online weights                                  EMA target
      tiny (random init)    seeded init on every rank, saved as base/       a copy (sharded alike under torchrun)
      one process           from_pretrained in fp32 (LoRA: base in the      a copy (LoRA: AdapterEMATarget, an
                            compute dtype, adapters fp32)                   EMA of the adapters only)
      torchrun, FSDP2       built on meta, sharded per block, filled from   a copy made before sharding, sharded
                            rank 0's copy (broadcast_from_rank0)            and filled alike (LoRA: adapter EMA)

    Every random draw is seeded so that all ranks hold shards of the same full tensors as one process."""
    lora = dict(rank=s.lora_rank, alpha=s.lora_alpha, dropout=s.lora_dropout, targets=s.lora_targets.split(","))

    def with_lora(net):  # seeded, so every rank (and rank 0's full copy) draws the same adapters
        if s.lora_rank:
            torch.manual_seed(s.seed + 1)
            loralib.add_lora(net, **lora)
        return net

    torch.manual_seed(s.seed)  # random init draws the same full tensors on every rank, as in one process
    if source.ckpt_dir is None:  # random init; the dry run's shapes-only source (no tokenizer) saves nothing
        # as from a checkpoint below: with LoRA the base never moves, so it is held in the compute dtype
        with default_dtype(compute_dtype if s.lora_rank else torch.float32):
            online = on_device(modellib.Transformer(source.model_cfg), dev)
        if master and source.tokenizer is not None:
            online.save_pretrained(os.path.join(s.out_dir, "base"), tokenizer=source.tokenizer)
    elif mesh is not None:  # one host copy of the weights (rank 0's), not one per rank
        with torch.device("meta"):
            online = modellib.Transformer(source.model_cfg)
    else:  # full fine-tuning keeps float32 master weights; with LoRA the base never moves, so it is held in the
        # compute dtype (LLaDA-8B in bf16: 16 GB instead of 32) and only the adapters are float32
        online = modellib.from_pretrained(source.ckpt_dir, dtype=compute_dtype if s.lora_rank else torch.float32,
                                          device=dev)
    with_lora(online)
    online.activation_checkpointing = s.activation_checkpointing
    # full fine-tuning: the EMA copy is made before sharding; LoRA: the adapter EMA after loading, below
    target = jepa.make_target_encoder(online) if s.jepa_weight > 0 and not s.lora_rank else None
    torch.manual_seed(s.seed + 2)  # the predictor's own stream: the same weights whatever was drawn before
    predictor = on_device(jepa.Predictor(source.model_cfg, s.predictor_layers), dev) if s.jepa_weight > 0 else None
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
    if s.jepa_weight > 0 and s.lora_rank:
        target = jepa.make_target_encoder(online)
    return Models(online, target, predictor, jepa.snapshot_parameters(online) if s.anchor_l2 > 0 else None)


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


def make_optimizer(s, trainable):
    """AdamW over what trains (with LoRA: the adapters and the predictor), weight decay on matrices only;
    fused: one kernel per step, on plain tensors and FSDP2's DTensors alike."""
    params = [p for p in trainable.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), fused=True), params


def micro_batch(s, indices, examples, eos_id, epoch, dev):
    """One micro-batch: the collated examples on the device and their views' noise (batch, ViewNoise)."""
    batch = {k: v.to(dev) for k, v in data.collate([examples[j] for j in indices], eos_id).items()}
    return batch, jepa.view_noise(indices, batch["input_ids"].shape[1], jepa.epoch_stream(s.seed, epoch), s.max_len)


def accumulate(s, models, trainable, group, make_batch, mask_token_id, autocast):
    """Forward and backward over one optimizer step's micro-batches (make_batch(indices) -> (batch, noise)):
    the gradients sum to those of the mean loss. Returns the mean of each logged number (tensors, no sync)
    and the tokens seen."""
    sums, tokens = {}, 0
    for i, indices in enumerate(group):
        for m in trainable.values():
            if isinstance(m, FSDPModule):  # reduce-scatter the gradients after the last micro-batch (or each)
                m.set_requires_gradient_sync(s.reduce_every_micro_batch or i == len(group) - 1)
        batch, noise = make_batch(indices)
        with autocast:
            res = jepa.objective(models.online, batch, mask_token_id, t_low=s.t_low, t_high=s.t_high,
                                 jepa_weight=s.jepa_weight, predictor=models.predictor,
                                 target_encoder=models.target, noise=noise, random_context_rate=s.random_context_rate,
                                 shuffled_target=s.shuffled_target)
        (res.loss / len(group)).backward()
        for k, v in {**res.stats, "loss": res.loss}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / len(group)
        tokens += batch["input_ids"].numel()
    return sums, tokens


def clip_gradients(s, models, params):
    """The L2 anchor's gradient (when on), then clipping; returns the gradient norm before clipping."""
    if models.anchor_base is not None:
        jepa.add_anchor_gradient(models.online, models.anchor_base, s.anchor_l2)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else float("inf"))
    return grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm


def apply_step(s, models, optimizer, current_lr):
    """The optimizer step at current_lr, then the EMA target's update."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = current_lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if models.target is not None:
        jepa.ema_update(models.target, models.online, s.ema_decay)
