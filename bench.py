"""
Speed and memory of the training step and of the sampler, side by side.

  python bench.py                                   # tiny preset, CPU
  python bench.py --model=1b --device=cuda --dtype=bfloat16 --batch_size=4 --seq_len=1024

Training step, same model, batch and sequence length; the times with the variants taking turns step by step in
one process (shared modules: a slow moment of the machine hits them alike), the peak memory of each variant in a
process of its own:
  baseline   the diffusion loss alone (lambda = 0): 1 forward + 1 backward            = 3F (Table 1)
  jepa       DLLM-JEPA: the context view with gradient, the target view no-grad (EMA) = 4F
  two_grad   both views through the online model with gradient (LLM-JEPA's cost)    = 6F
  jepa_lora  DLLM-JEPA with LoRA adapters of --lora_rank (one-GPU mode), for its peak memory: ask for it
             with --variants=baseline,jepa,two_grad,jepa_lora (or --variants=jepa_lora at 8B on one GPU)
Reported: seconds per optimizer step (median and range), peak memory, tokens/s, MFU (GPU), and the ratios
jepa/baseline and two_grad/jepa (the median of the step-by-step ratios, and their range) beside the FLOP
bookkeeping 4F/3F = 1.33 and 6F/4F = 1.5.
The decoding options against the exact sampler on a trained checkpoint, with their scores: replication/decoding.py.
Sampler: sampler.py's generate (batched, logits for the current block only) against a plain one-prompt-at-a-time
implementation of the same algorithm (whole-sequence logits every step), outputs checked identical.
Prints a table and writes bench.json.
"""

import copy
import json
import math
import os
import resource
import subprocess
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

from sampler import check_schedule, cut_at_stop, generate, num_transfer_tokens
import jepa
import lora as loralib
import model as modellib
from configurator import check_ranges, configure, setting_keys
from harness.errors import ConfigError
from harness import plan, runtime
from harness.outputs import disk_errors, prepare_output_dir
from harness.runtime import flops_per_token, init_distributed, peak_flops, resolve_dtype, run_main
from harness.timing import median, timed

# -----------------------------------------------------------------------------
# settings
model = "tiny"  # a key of MODELS
batch_size = 8
seq_len = 128
prompt_len = 32  # of seq_len; the rest is the maskable response
iters = 20  # timed optimizer steps per variant (the median is reported)
warmup = 3
activation_checkpointing = False
predictor_layers = 3
lora_rank = 16  # rank of the jepa_lora variant
variants = "baseline,jepa,two_grad"  # which to run; add jepa_lora for the one-GPU mode's peak memory
device = "auto"
trust_remote_code = False  # run a tokenizer shipped as code beside a checkpoint (Dream's): for sources you trust
dtype = "auto"  # auto = bfloat16 on GPU (autocast compute, float32 master weights), float32 on CPU
sampler = True
sampler_prompts = 8
sampler_gen_length = 64
sampler_block_length = 32
sampler_steps = 64
# the early stop of the evaluation sampler, on a trained checkpoint (empty: skipped); the paper's NL-RX setting
early_stop_checkpoint = ""  # e.g. out-tiny (python train.py --preset tiny)
early_stop_task = "tiny-regex"
early_stop_data_dir = ""
early_stop_items = 0  # 0 = the whole evaluation split
early_stop_gen_length = 512
early_stop_block_length = 128
early_stop_steps = 128
out = "bench.json"
only = ""  # internal: run one training variant and print its JSON
KEYS = setting_keys(globals())

MODELS = {
    "tiny": modellib.PRESETS["tiny"],
    # ~30M parameters: large enough that a CPU step is compute-bound rather than per-op overhead
    "small": replace(modellib.PRESETS["tiny"], n_layers=8, d_model=512, n_heads=8, n_kv_heads=8, mlp_hidden=1408),
    # a 1.3B LLaDA-layout configuration for a single GPU (LLaDA-8B's vocabulary and head size)
    "1b": replace(modellib.PRESETS["llada-8b"], n_layers=16, d_model=2048, n_heads=16, n_kv_heads=16,
                  mlp_hidden=5632),
    "llada-8b": modellib.PRESETS["llada-8b"],
}
VARIANTS = ("baseline", "jepa", "two_grad", "jepa_lora")
FLOP_RATIOS = {"jepa/baseline": 4 / 3, "two_grad/jepa": 6 / 4}


def two_grad_objective(online, batch, mask_token_id, predictor, noise, t_low, t_high):
    """LLM-JEPA's cost structure on our model: both views through the online model with gradient."""
    input_ids, maskable, padding = batch["input_ids"], batch["maskable"], batch["padding"]
    context_view, context_masked = jepa.mask_view(input_ids, maskable, t_low, mask_token_id, noise.context)
    target_view, target_masked = jepa.mask_view(input_ids, maskable, t_high, mask_token_id, noise.target)
    out = online(context_view, logits_at=context_masked)
    l_diff = jepa.diffusion_loss(out.logits, input_ids[context_masked], context_masked)
    target_hidden = online(target_view, logits_at=torch.zeros_like(target_masked)).hidden
    target_embedding = jepa.pool(target_hidden, ~target_masked & ~padding)
    predicted = predictor(jepa.pool(out.hidden, ~context_masked & ~padding))
    # no stop-gradient (jepa.jepa_loss has one): the gradient flows into both views, as in LLM-JEPA
    return l_diff + 1.0 - F.cosine_similarity(predicted.float(), target_embedding, dim=-1).mean()


def synthetic_batch(cfg, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg.vocab_size, (batch_size, seq_len), generator=g)
    maskable = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    maskable[:, prompt_len:] = True
    return {"input_ids": ids.to(dev), "maskable": maskable.to(dev),
            "padding": torch.zeros(batch_size, seq_len, dtype=torch.bool, device=dev)}


def peak_memory_bytes(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def training_steps(names, dev):
    """({variant: one optimizer step}, parameters of the online model). baseline, jepa and two_grad share one
    online model, predictor, EMA target and optimizer (the memory of the jepa variant alone), so they can
    take turns in one process; jepa_lora builds its own LoRA model."""
    cfg = MODELS[model]
    torch.manual_seed(0)
    with torch.device(dev):  # initialised where it runs: an 8B random init on the host takes minutes
        online = modellib.Transformer(cfg)
    online.activation_checkpointing = activation_checkpointing
    if names == ["jepa_lora"]:  # as train.py's one-process LoRA: the frozen base in the compute dtype
        loralib.add_lora(online.to(resolve_dtype(dtype, dev)), lora_rank)
    with torch.device(dev):
        predictor = jepa.Predictor(cfg, predictor_layers) if names != ["baseline"] else None
    target = jepa.make_target_encoder(online) if {"jepa", "jepa_lora"} & set(names) else None
    params = [p for p in online.parameters() if p.requires_grad] + \
        (list(predictor.parameters()) if predictor is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as train.py
    batch = synthetic_batch(cfg, dev)
    noise = jepa.draw_view_noise((batch_size, seq_len), torch.Generator().manual_seed(1))
    use_autocast = resolve_dtype(dtype, dev) == torch.bfloat16

    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_autocast)  # noqa: E731

    def step(variant):
        with autocast():
            if variant == "two_grad":
                loss = two_grad_objective(online, batch, cfg.mask_token_id, predictor, noise, jepa.T_LOW, jepa.T_HIGH)
            else:
                loss = jepa.objective(online, batch, cfg.mask_token_id, jepa_weight=0.0 if variant == "baseline" else 1.0,
                                      predictor=predictor, target_encoder=target, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if target is not None and variant != "baseline" and variant != "two_grad":
            jepa.ema_update(target, online)

    def pieces():
        """What DLLM-JEPA's step adds to the baseline's, each piece alone on the same batch: {name: callable}."""
        ids, maskable, padding = batch["input_ids"], batch["maskable"], batch["padding"]
        view, masked = jepa.mask_view(ids, maskable, jepa.T_HIGH, cfg.mask_token_id, noise.target)
        keep, nothing = ~masked & ~padding, torch.zeros_like(masked)
        hidden = torch.randn(batch_size, seq_len, cfg.d_model, device=dev, requires_grad=True)

        def target_forward():
            with torch.no_grad(), autocast():
                target(view, logits_at=nothing)

        def predictor_and_loss():
            with autocast():
                loss = jepa.jepa_loss(predictor(jepa.pool(hidden, keep)), jepa.pool(hidden.detach(), keep))[0]
            loss.backward()

        # the baseline's optimizer step skips the predictor (no gradients there); timed on a copy with
        # gradients of its own, so the piece cannot change what the shared steps do
        spare = copy.deepcopy(predictor)
        for p in spare.parameters():
            p.grad = torch.zeros_like(p)
        predictor_update = torch.optim.AdamW(spare.parameters(), lr=1e-5, fused=True).step

        return {"target view (masking)": lambda: jepa.mask_view(ids, maskable, jepa.T_HIGH, cfg.mask_token_id,
                                                               noise.target),
                "EMA target forward": target_forward,
                "pooling, predictor, loss (fwd+bwd)": predictor_and_loss,
                "AdamW on the predictor": predictor_update,
                "EMA update": lambda: jepa.ema_update(target, online)}
    steps = {name: (lambda name=name: step(name)) for name in names}
    return steps, online.num_params(), (pieces() if "jepa" in names else {})


def counted_flops(steps):
    """{variant: FLOPs of one optimizer step}, counted by the dry run's own counter (harness/plan.py's
    flop_counter: torch's FlopCounterMode with the CPU attention kernels taught) on one more step of the very
    code that is timed: the FLOP ratio of the same shape, beside the time ratio."""
    out = {}
    for name, step in steps.items():
        with plan.flop_counter() as counter:
            step()
        out[name] = counter.get_total_flops()
    return out


def overhead_breakdown(pieces, times, dev):
    """{piece: median seconds} of DLLM-JEPA's pieces (taking turns), their sum, and the measured difference
    of the jepa and baseline steps' medians: what the pieces do not account for is the rest."""
    piece_times = time_steps(pieces, dev)
    medians = {name: median(t) for name, t in piece_times.items()}
    difference = median(times["jepa"]) - median(times["baseline"])
    return {"pieces_s": medians, "sum_s": sum(medians.values()), "jepa_minus_baseline_s": difference}


def time_steps(steps, dev):
    """{variant: [seconds of each timed step]}: the variants take turns, step by step, after the warm-up
    steps, so a slow moment of the machine hits them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            times[name].append(timed(dev, step)[1])
    return times


def variant_row(variant, times, n_params, dev, memory=None):
    """The table's row: median step time and its range, tokens/s, MFU, peak memory (its own process)."""
    seconds = median(times)
    tokens = batch_size * seq_len
    # two_grad: forward and backward of both views, 2 x 6N
    flops = tokens * (12 * n_params if variant == "two_grad" else
                      flops_per_token(n_params, jepa=variant != "baseline", lora=variant == "jepa_lora"))
    peak = peak_flops(dev)
    return {"variant": variant, "step_s": seconds, "step_s_range": [min(times), max(times)],
            "tokens_per_s": tokens / seconds, "peak_memory_gb": memory, "params": n_params,
            "mfu": flops / seconds / peak if peak else None}


def run_variant(variant, dev):
    """One variant alone in this process (bench.py --only): its peak memory is its own."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    steps, n_params, _ = training_steps([variant], dev)
    times = time_steps(steps, dev)[variant]
    return variant_row(variant, times, n_params, dev, peak_memory_bytes(dev) / 2**30)


@torch.no_grad()
def plain_generate(net, prompt, steps, gen_length, block_length):
    """The same sampler, one prompt at a time, whole-sequence logits every step (LLaDA's generate.py)."""
    cfg = net.cfg
    x = torch.tensor([prompt + [cfg.mask_token_id] * gen_length], device=next(net.parameters()).device)
    n_blocks = gen_length // block_length
    steps_per_block = steps // n_blocks
    for block in range(n_blocks):
        lo, hi = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
        schedule = num_transfer_tokens((x[:, lo:hi] == cfg.mask_token_id).sum(1), steps_per_block)
        for step in range(steps_per_block):
            logits = net(x).logits
            x0 = logits.argmax(-1)
            confidence = F.softmax(logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1)
            confidence[:, hi:] = -math.inf
            confidence = torch.where(x == cfg.mask_token_id, confidence, -math.inf)
            k = int(schedule[0, step])
            if k:
                chosen = torch.topk(confidence[0], k).indices
                x[0, chosen] = x0[0, chosen]
    return x[0, len(prompt):]


def run_early_stop(dev):
    """The evaluation sampler with and without the early stop, on a trained checkpoint's own outputs: the
    task's 0-shot evaluation prompts, batched as evaluate.py batches them (sorted by length). Returns the
    wall times, the fraction of row-blocks skipped, and whether every output cut at its first stop token
    is identical."""
    import data
    ckpt_dir = modellib.resolve_checkpoint_dir(early_stop_checkpoint)
    net = modellib.load_for_inference(ckpt_dir, dtype=resolve_dtype(dtype, dev), device=dev)
    tokenizer = modellib.load_tokenizer(ckpt_dir, net.cfg, trust_remote_code)
    items = data.load_task(early_stop_task, "eval", early_stop_data_dir or None)[:early_stop_items or None]
    prompts = sorted((data.format_example(early_stop_task, x, tokenizer)[0] for x in items), key=len)
    batches = [prompts[i:i + sampler_prompts] for i in range(0, len(prompts), sampler_prompts)]
    kwargs = dict(steps=early_stop_steps, gen_length=early_stop_gen_length, block_length=early_stop_block_length)
    stops = {net.cfg.eos_token_id}
    stats = [{} for _ in batches]
    generate(net, batches[0][:1], **kwargs)  # warm-up
    full, t_full = timed(dev, lambda: [generate(net, b, **kwargs) for b in batches])
    early, t_early = timed(dev, lambda: [generate(net, b, stop_ids=stops, stats=s, **kwargs)
                                         for b, s in zip(batches, stats)])
    cut = lambda out: [cut_at_stop(row, stops) for part in out for row in part.tolist()]  # noqa: E731
    run, total = sum(s["rows_blocks_run"] for s in stats), sum(s["rows_blocks_total"] for s in stats)
    return {"checkpoint": early_stop_checkpoint, "task": early_stop_task, "items": len(prompts), **kwargs,
            "full_s": t_full, "early_stop_s": t_early, "early_stop_speedup": t_full / t_early,
            "blocks_skipped": 1 - run / total, "identical_cut_outputs": cut(full) == cut(early)}


def run_sampler(dev):
    cfg = MODELS[model]
    torch.manual_seed(0)
    with torch.device(dev):
        net = modellib.Transformer(cfg).to(resolve_dtype(dtype, dev)).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, cfg.vocab_size, (int(torch.randint(prompt_len // 2, prompt_len + 1, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(sampler_prompts)]
    kwargs = dict(steps=sampler_steps, gen_length=sampler_gen_length, block_length=sampler_block_length)
    generate(net, prompts[:1], **kwargs)  # warm-up
    batched, t_batched = timed(dev, lambda: generate(net, prompts, **kwargs))
    plain, t_plain = timed(dev, lambda: torch.stack([plain_generate(net, p, **kwargs) for p in prompts]))
    tokens = len(prompts) * sampler_gen_length
    return {"batched_tokens_per_s": tokens / t_batched, "plain_tokens_per_s": tokens / t_plain,
            "sampler_speedup": t_plain / t_batched, "identical_outputs": bool(torch.equal(batched, plain))}


def main(argv):
    cfg = configure(globals(), KEYS, argv)
    chosen = validate()
    _, _, dev = init_distributed(device)
    compute_dtype = resolve_dtype(dtype, dev)  # a bad --dtype fails here
    if only:
        print(json.dumps(run_variant(only, dev)))
        return
    prepare_output_dir(os.path.dirname(os.path.abspath(out)), "--out")  # before minutes of timing
    rows, times, flops, breakdown = training_benchmarks(chosen, dev, argv)
    result = {"config": cfg, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "train": rows, "ratios": step_ratios(times, flops), "flops_counted": flops,
              "table_1_flop_ratios": FLOP_RATIOS, "jepa_overhead": breakdown}
    if sampler:
        result["sampler"] = run_sampler(dev)
    if early_stop_checkpoint:
        result["early_stop"] = run_early_stop(dev)
    print_result(result, compute_dtype)
    with disk_errors(out), open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


def validate():
    """Every flag checked before anything runs; returns the training variants chosen."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    chosen = [v for v in variants.split(",") if v]  # empty: no training variants
    if set(chosen) - set(VARIANTS) or (only and only not in VARIANTS):
        raise ConfigError(f"variants must be among {VARIANTS}")
    if not 0 < prompt_len < seq_len:
        raise ConfigError("need 0 < prompt_len < seq_len")
    check_ranges(globals(), {"batch_size": (1, None), "iters": (1, None), "warmup": (0, None),
                             "predictor_layers": (0, 64), "lora_rank": (1, None), "sampler_prompts": (1, None),
                             "early_stop_items": (0, None)})
    check_schedule(sampler_gen_length, sampler_block_length, sampler_steps, "--sampler_")
    check_schedule(early_stop_gen_length, early_stop_block_length, early_stop_steps, "--early_stop_")
    return chosen


def training_benchmarks(chosen, dev, argv):
    """(rows, times, flops, breakdown): each variant's peak memory in a fresh process of its own (so the peak
    is the variant's alone), then the variants but LoRA's timed taking turns in this process (so every
    variant sees the same machine), their FLOPs counted, and DLLM-JEPA's pieces timed where the baseline ran."""
    rows = []
    for variant in chosen:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--only={variant}",
                               f"--device={dev.type}"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise runtime.RunError(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    shared = [v for v in chosen if v != "jepa_lora"]
    if not shared:
        return rows, {}, {}, None
    steps, n_params, pieces = training_steps(shared, dev)
    times = time_steps(steps, dev)
    breakdown = overhead_breakdown(pieces, times, dev) if pieces and "baseline" in times else None
    rows = [variant_row(r["variant"], times[r["variant"]], n_params, dev, r["peak_memory_gb"])
            if r["variant"] in times else r for r in rows]
    return rows, times, counted_flops(steps), breakdown


def step_ratios(times, flops):
    """jepa/baseline and two_grad/jepa: the median of the step-by-step time ratios (the two steps of a turn
    saw the same machine), their range, and the ratio of the FLOPs counted."""
    ratios = {}
    for a, b in (("jepa", "baseline"), ("two_grad", "jepa")):
        if a in times and b in times:
            each = [x / y for x, y in zip(times[a], times[b])]
            ratios[f"{a}/{b}"] = median(each)
            ratios[f"{a}/{b}_range"] = [min(each), max(each)]
            ratios[f"{a}/{b}_flops"] = flops[a] / flops[b]
    return ratios


def print_result(result, compute_dtype):
    rows, ratios = result["train"], result["ratios"]
    print(f"device {result['device']}, {str(compute_dtype).removeprefix('torch.')}")
    if rows:
        print(f"model {model} ({rows[0]['params'] / 1e6:.1f}M), batch {batch_size} x {seq_len} tokens, "
              f"activation checkpointing {activation_checkpointing}")
        print(f"{'variant':10} {'s/step':>9} {'range':>17} {'tokens/s':>10} {'peak GB':>8} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        low, high = r["step_s_range"]
        print(f"{r['variant']:10} {r['step_s']:9.4f} {low:8.4f}-{high:<8.4f} {r['tokens_per_s']:10.0f} "
              f"{r['peak_memory_gb']:8.2f} {mfu:>6}")
    for k in FLOP_RATIOS:
        if k in ratios:
            low, high = ratios[k + "_range"]
            counted = ratios[k + "_flops"]
            print(f"{k:14} {ratios[k]:.2f} (step by step {low:.2f}-{high:.2f}; FLOPs counted {counted:.2f}, time "
                  f"beyond them {ratios[k] / counted - 1:+.0%}; Table 1's {FLOP_RATIOS[k]:.2f})")
    if result["jepa_overhead"]:
        print_overhead(result["jepa_overhead"])
    if "sampler" in result:
        s = result["sampler"]
        print(f"sampler: batched {s['batched_tokens_per_s']:.0f} tokens/s, plain {s['plain_tokens_per_s']:.0f} "
              f"tokens/s, speed-up {s['sampler_speedup']:.1f}x, identical outputs: {s['identical_outputs']}")
    if "early_stop" in result:
        e = result["early_stop"]
        print(f"early stop ({e['task']}, {e['items']} items, gen {e['gen_length']} / block {e['block_length']} / "
              f"{e['steps']} steps): {e['full_s']:.1f} s -> {e['early_stop_s']:.1f} s, speed-up "
              f"{e['early_stop_speedup']:.2f}x, {e['blocks_skipped']:.0%} of row-blocks skipped, identical cut "
              f"outputs: {e['identical_cut_outputs']}")


def print_overhead(b):
    print("DLLM-JEPA's step beyond the baseline's, piece by piece (each alone, taking turns; median s):")
    for name, seconds in b["pieces_s"].items():
        print(f"  {name:36} {seconds:.4f}")
    rest = b["jepa_minus_baseline_s"] - b["sum_s"]
    print(f"  {'sum':36} {b['sum_s']:.4f}   measured jepa - baseline {b['jepa_minus_baseline_s']:.4f} (rest {rest:+.4f})")


if __name__ == "__main__":
    run_main("bench.py", main, sys.argv[1:], lambda: runtime.DIST_TIMEOUT)
