"""
`train.py --dry_run true`: the run these settings launch, planned instead of run. training/step.py's own
functions (the models' build with FSDP2, mixed precision and activation checkpointing, the accumulation,
clipping, update and EMA) run two optimizer steps at the run's shapes on fake tensors and a fake process
group (harness/plan.py has the method, the measuring and where the plan departs from a real step):

  settings s --plan_model_config--> the model's shape (a preset, a local config.json, or offline the
                                    release's preset)
  --plan_once--> two steps under the memory tracker and the FLOP counter, on `world` fake ranks (with
                 --dry_run_real, on this launch's real ranks and tensors: the plan's check)
  --plan_summary--> FLOPs by hand beside the count, time estimates, whether it fits --gpu_memory
  --fit_advice / largest_batch--> the same planned again under other settings

Every function takes the run's settings as `s`; a re-plan under other settings gets a changed copy.
"""

import math
import os
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn as nn

import jepa
import model as modellib
from harness import plan, runtime
from harness.errors import ConfigError
from training.step import (Source, accumulate, apply_step, build_models, clip_gradients, make_optimizer,
                           micro_batch, resolve_grad_accum)


def plan_main(s, cfg):
    """Plan the run, print the plan (and the nearest setting that fits when it does not, and the largest
    batch when asked), write it as JSON to --dry_run_out. cfg: the settings as train.py reports them."""
    model_cfg, origin = plan_model_config(s)
    found = plan_once(s, model_cfg, s.dry_run_world)
    if s.dry_run_real and found is None:  # a rank other than 0 of the check
        return
    report = {"settings": cfg, "model_config_from": origin, "plan": found}
    if not found["fits"] and not s.dry_run_real:
        report["nearest_fit"] = fit_advice(s, model_cfg)
    if s.dry_run_largest_batch and not s.dry_run_real:
        report["largest_batch"] = largest_batch(s, model_cfg)
    plan.print_plan(report)
    if s.dry_run_out:
        from harness.outputs import write_json
        write_json(s.dry_run_out, report)
        print(f"wrote {s.dry_run_out}")


def plan_model_config(s):
    """(ModelConfig, where it came from): a model.PRESETS name; a checkpoint directory's config.json or the
    hub cache's; else, offline, the preset of the release's shape (the network is never asked)."""
    if s.model in modellib.PRESETS:
        return modellib.PRESETS[s.model], f"model.PRESETS[{s.model!r}]"
    path = os.path.join(modellib.resolve_checkpoint_dir(s.model), "config.json") if os.path.isdir(s.model) else None
    if path is None:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(s.model, "config.json")
        path = cached if isinstance(cached, str) else None
    if path is not None:
        return modellib.config_from_release(modellib.read_release_config(os.path.dirname(path)), path), path
    name = s.model.lower()
    shape = "dream-7b" if "dream" in name else "llada-8b" if "llada" in name else None
    if shape is None:
        raise ConfigError(f"--dry_run: no config.json for --model={s.model} here, and its name matches no preset; "
                          f"pass a checkpoint directory or one of {', '.join(modellib.PRESETS)}")
    return modellib.PRESETS[shape], f"model.PRESETS[{shape!r}]: no local copy of {s.model}'s config.json (offline)"


# micro-batches of a step that the plan runs: the first and the last when there are more. Gradients accumulate
# in place (under FSDP2 unsharded until the last micro-batch's reduce-scatter), so the first holds what every
# micro-batch before the last holds and the last adds the reduce-scatter; a skipped one differs only in how many
# positions it masks, its LM head's logits: at the paper's fixed t_L a few dozen positions, tens of MB at 8B.
# The step's FLOPs follow exactly from the two counted (harness/plan.py's whole_step_flops). One process with
# LoRA accumulates 16 micro-batches for the paper's batch of 32: planning them all took over 20 minutes at 8B.
PLANNED_MICRO_BATCHES = 2


def plan_once(s, model_cfg, world):
    """Two optimizer steps of this configuration on `world` fake ranks (with --dry_run_real, on this launch's
    real ranks and tensors), measured on rank 0: memory by category, FLOPs, estimates. None on other ranks.
    Each step runs at most PLANNED_MICRO_BATCHES of its micro-batches."""
    if s.dry_run_real:
        world, rank, dev = runtime.init_distributed("cpu", s.dist_timeout)
        from torch.distributed.device_mesh import init_device_mesh
        mesh, mode = (init_device_mesh("cpu", (world,)) if world > 1 else None), None
    else:
        mesh, mode, rank, dev = plan.fake_world(world), plan.fake_mode(), 0, torch.device("cpu")
    compute = torch.bfloat16 if s.dtype == "auto" else runtime.DTYPES[s.dtype]  # a GPU run's default: bfloat16
    accum = resolve_grad_accum(s, world)
    examples = plan.planned_examples(s.batch_size * accum, s.max_len, model_cfg.vocab_size)
    group = [list(range(i * s.batch_size, (i + 1) * s.batch_size)) for i in range(accum)]
    planned = group if accum <= PLANNED_MICRO_BATCHES else [group[0], group[-1]]
    with mode or nullcontext():
        models = build_models(s, Source(model_cfg, None, None, None), dev, compute, mesh, master=False)
        trainable = nn.ModuleDict({"online": models.online} | ({"predictor": models.predictor} if models.predictor else {}))
        optimizer, params = make_optimizer(s, trainable)
        autocast = torch.autocast("cpu", dtype=compute) if world == 1 and compute != torch.float32 else nullcontext()

        def make_batch(indices):
            with plan.real_values():
                batch = micro_batch(s, indices, examples, model_cfg.eos_token_id, 0, dev)
            return plan.constant(mode, batch)

        tracked = models._replace(target=plan.trackable(models.target))  # the same computation

        def step():
            accumulate(s, tracked, trainable, planned, make_batch, model_cfg.mask_token_id, autocast)
            clip_gradients(s, models, params)
            apply_step(s, models, optimizer, s.lr)

        found = plan.measure(step, models.online, optimizer, {"EMA target": tracked.target, "predictor": models.predictor})
        with plan.real_values():  # the LM head's positions, for the count by hand: the same views again
            found["masked_positions"] = [masked_count(s, micro_batch(s, i, examples, model_cfg.eos_token_id, 0, dev),
                                                      model_cfg.mask_token_id) for i in group]
    if planned is not group:
        m = found["masked_positions"]
        found["flops"] = plan.whole_step_flops(found["flops"], m[0], m[-1], m, plan.head_flops(model_cfg, s.lora_rank > 0))
    if s.dry_run_real:
        runtime.close_distributed(world)
        if rank != 0:
            return None
    return plan_summary(s, found, model_cfg, world, accum)


def masked_count(s, batch_and_noise, mask_token_id):
    """How many positions of a micro-batch the context view masks (where the LM head runs)."""
    batch, noise = batch_and_noise
    rate = (1.0 - noise.rate) if s.random_context_rate else s.t_low
    return int(jepa.mask_view(batch["input_ids"], batch["maskable"], rate, mask_token_id, noise.context)[1].sum())


def plan_summary(s, found, model_cfg, world, accum):
    """The plan's numbers from the measurement: FLOPs counted and by hand, tokens per step, the estimates,
    and whether it fits --gpu_memory."""
    tokens = world * s.batch_size * accum * s.max_len
    lora = (s.lora_rank, s.lora_targets.split(",")) if s.lora_rank else None
    analytic = plan.analytic_step_flops(model_cfg, found["masked_positions"], s.batch_size, s.max_len,
                                        s.jepa_weight > 0, s.activation_checkpointing, s.predictor_layers, lora)
    size = plan.TRAIN_SIZES.get(s.task, 0)
    steps_per_epoch = math.ceil(size / (world * s.batch_size * accum))
    need = found["peak_total_unhooked"] / 2 ** 30 + plan.RESERVE_GIB
    return {**found, "world": world, "grad_accum": accum, "batch_size": s.batch_size, "max_len": s.max_len,
            "activation_checkpointing": s.activation_checkpointing, "lora_rank": s.lora_rank,
            "analytic_flops": analytic, "tokens_per_step": tokens,
            "flops_per_token": found["flops"] * world / tokens, "steps_per_epoch": steps_per_epoch,
            "estimates": plan.estimates(found["flops"], tokens, steps_per_epoch), "needs_gib": need,
            "fits": need <= s.gpu_memory}


def changed(s, **values):
    """A copy of the settings with these values (the fit advice and the largest batch re-plan under them)."""
    return SimpleNamespace(**(vars(s) | values))


def fit_advice(s, model_cfg):
    """The nearest setting that fits --gpu_memory: the first of plan.fit_candidates whose plan fits, as
    {'settings', 'needs_gib'}, or {'none': ...}. A candidate whose ranks and batch do not divide
    --total_batch is skipped, and LoRA where the L2 anchor is on. A --gpu_memory no larger than the reserve
    leaves nothing for any setting: said without re-planning."""
    world = s.dry_run_world
    if s.gpu_memory <= plan.RESERVE_GIB:
        return {"none": f"--gpu_memory={s.gpu_memory:g} GiB is no more than the {plan.RESERVE_GIB:g} GiB every GPU "
                        f"keeps beside the tensors (CUDA context, NCCL buffers, fragmentation)"}
    candidates = plan.fit_candidates(world, s.batch_size, s.activation_checkpointing,
                                     resolve_grad_accum(s, world) > 1 and not s.reduce_every_micro_batch, s.lora_rank)
    for change in candidates:
        ranks = change.get("dry_run_world", world)
        if s.total_batch and s.total_batch % (ranks * change.get("batch_size", s.batch_size)):
            continue
        if "lora_rank" in change and s.anchor_l2:  # the L2 anchor is for full fine-tuning
            continue
        found = plan_once(changed(s, **change), model_cfg, ranks)
        if found["fits"]:
            return {"settings": change, "needs_gib": found["needs_gib"]}
    return {"none": f"no setting tried fits {s.gpu_memory:g} GiB: {', '.join(map(str, candidates))}"}


LARGEST_BATCH_TRIED = 1024  # per GPU: the search stops there, reported as "at least"


def largest_batch(s, model_cfg):
    """The largest per-GPU batch that fits --gpu_memory among 1, 2, 4, ..., each planned as one micro-batch a
    step (accumulation 1, so the effective batch is ranks x batch), as {'batch_size', 'needs_gib'}; batch_size
    0 when even 1 does not fit. Memory grows with the batch, so the doubling stops at the first that fails."""
    best = {"batch_size": 0, "needs_gib": None}
    b = 1
    while b <= LARGEST_BATCH_TRIED:  # a --gpu_memory no batch fills would otherwise double it for ever
        found = plan_once(changed(s, batch_size=b, total_batch=0, grad_accum=1), model_cfg, s.dry_run_world)
        if not found["fits"]:
            return best
        best, b = {"batch_size": b, "needs_gib": found["needs_gib"]}, 2 * b
    return best | {"at_least": True}
