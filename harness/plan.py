"""
A training run planned instead of run (`train.py --dry_run true`): training/step.py's optimizer step at the run's
real shapes on fake tensors and a fake process group of N ranks, so that memory per rank and FLOPs per step
are known on any CPU before a GPU is rented (the method of torchtitan's memory estimator: FakeTensorMode,
torch's FakeStore process group, torch.distributed._tools' FSDPMemTracker).

  settings --step.build_models--> online model, EMA target, predictor (LoRA adapters), wrapped by the run's
           own FSDP2 / mixed-precision / activation-checkpointing code on N fake ranks; every tensor a
           FakeTensor: a shape and a dtype, no storage
  two optimizer steps (training/step.py's accumulate, clip, step, EMA) --FSDPMemTracker--> peak bytes per
           category on one rank, and the module running at the peak
                                                               --FlopCounterMode--> FLOPs of the second step
  one more step --LiveBytes (no module hooks)--> the peak total the fit is judged on: torch's trackers'
           hooks keep some activations alive that the run frees, so their categories read high
  --estimate--> step time, tokens/s and epoch time at a stated MFU on A100 and H100 (bf16 dense peaks)

Where the dry run departs from the real step (the code that runs is the run's; these are its inputs):
  - batches: every example is max_len tokens long (the worst case: a real micro-batch pads to its longest
    row), PROMPT_FRACTION of it prompt, token ids drawn at random; no data file is read.
  - micro-batches: a step runs its first and last only (training/dry_run.py's PLANNED_MICRO_BATCHES); the
    FLOPs of the others are added exactly (whole_step_flops).
  - masks: the views' masks are drawn on real tensors as in training and enter the fake step as constants
    (FakeMode), so boolean indexing (logits only at the masked positions) gets a real count: one draw at the
    configured rates, not their mean (a few tokens apart at these sizes).
  - device and dtype: the CPU (fake CUDA tensors need a CUDA build of torch), computing in bfloat16 as a GPU
    run does. The bytes are those of the run's tensors; the CUDA caching allocator's rounding and
    fragmentation, NCCL's buffers and the CUDA context (roughly 1-2 GB a GPU) are not in them.
"""

import contextlib
import gc
import math
import weakref

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

CONSTANT_LIMIT = 1 << 24  # elements: the batch's tensors (ids, masks, noise) lie far below, activations far above
PROMPT_FRACTION = 0.25  # of each planned example: prompt, never masked (GSM8K's prompts are about a quarter)
# dense bf16 tensor-core peaks per GPU, from NVIDIA's datasheets (A100 SXM: 312 TFLOPS; H100 SXM: 989 TFLOPS)
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12}
# training examples per task, for the epoch time (the dry run reads no data): GSM8K's train.jsonl (openai/
# grade-school-math), LLM-JEPA's NL-RX and Spider train files (rbalestr-lab/llm-jepa), Django's standard
# 16,000-pair train split (Oda et al. 2015); tests/test_plan.py checks them against the files where present
TRAIN_SIZES = {"gsm8k": 7473, "nlrx": 8000, "nlrx-turk": 8000, "spider": 6587, "django": 16000}
RESERVE_GIB = 2.0  # beside the tracked tensors: the CUDA context, NCCL's buffers, the allocator's fragmentation
LORA_ADVICE_RANK = 16  # the LoRA rank the fit advice tries for a full fine-tuning run that does not fit
MFU = 0.4  # the utilisation the time estimates assume (a well-tuned FSDP run of an 8B model reaches 0.35-0.5)


# -----------------------------------------------------------------------------
# fake tensors that keep the batch's values


def fake_mode():
    """A FakeTensorMode in which the batch's tensors, made constant by constant(), keep their real values and
    so does everything computed from them alone (the views' masks, the masked targets); everything touching a
    parameter is fake. Constants stay real only up to CONSTANT_LIMIT elements."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    in_place_steps = {torch.ops.aten._fused_adamw_.default, torch.ops.aten._fused_adam_.default}

    class KeepBatchValues(FakeTensorMode):
        def may_turn_const(self, t):  # FakeTensorMode's own rule keeps only one-element results
            return (type(t) is torch.Tensor and t.numel() <= CONSTANT_LIMIT and not self.is_our_fake(t)
                    and t.device.type != "meta")

        def dispatch(self, func, types, args=(), kwargs=None):
            # the fused optimizer step updates its tensors in place and allocates nothing on the GPU; its fake
            # kernel builds new output lists (five times the optimizer's tensors), which the tracker would count
            if func in in_place_steps:
                return None
            return super().dispatch(func, types, args, kwargs)

    return KeepBatchValues(allow_non_fake_inputs=True)


def constant(mode, tree):
    """Every tensor of a (nested) batch as a constant of `mode`; tree itself when mode is None (a real run)."""
    if mode is None:
        return tree
    return pytree.tree_map_only(
        torch.Tensor, lambda t: mode.fake_tensor_converter.from_real_tensor(mode, t, make_constant=True), tree)


def real_values():
    """Where the batch is built: real tensors even inside the fake mode."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    return unset_fake_temporarily()


def fake_world(n):
    """A fake process group of n ranks (this process is rank 0; collectives return at once) and its mesh,
    None for one rank (train.py shards nothing then)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore  # torch's own fake backend ("fake")
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=0, world_size=n, store=FakeStore())
    return init_device_mesh("cpu", (n,)) if n > 1 else None


def planned_examples(n, length, vocab_size, seed=0):
    """n examples of `length` tokens each (prompt PROMPT_FRACTION of it, the rest response; the EOS collate
    appends is counted in), token ids drawn uniformly past the special ids."""
    g = torch.Generator().manual_seed(seed)
    prompt = int(length * PROMPT_FRACTION)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab_size, (length - 1,), generator=g).tolist()
        out.append({"prompt_ids": ids[:prompt], "response_ids": ids[prompt:]})
    return out


# -----------------------------------------------------------------------------
# measuring


def flop_counter():
    """torch's FlopCounterMode, taught the CPU flash-attention kernels (the dry run's device) with the
    formulas it has for the CUDA ones."""
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)  # it passes the formulas shapes


def measure(run_step, root, optimizer, others, steps=2):
    """Run `steps` optimizer steps under torch's memory tracker (FSDPMemTracker when root is FSDP-sharded,
    MemTracker otherwise; with_peak_module's variant of either) and count the FLOPs of the last. others:
    modules outside root whose tensors count too (the EMA target, the predictor). Returns {'peak': {category:
    bytes}, 'peak_total', 'peak_module', 'flops'} for this rank.

    The tracked steps run with Python's cycle collector paused. The tracker's backward hooks keep the first
    micro-batch's activations in reference cycles; how many of them the collector happened to free before the
    second micro-batch's peak depended on everything the process had allocated before (1.73 to 2.12 times one
    micro-batch's activations, measured on the tiny preset in one process), so the tracker's figures changed
    from run to run. Paused, no cycle is freed during the steps, and the figures are the same in every run.
    The hook-free total (LiveBytes), the one the plan uses, never depended on it."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.fsdp import FSDPModule
    sharded = isinstance(root, FSDPModule)
    tracker = with_peak_module(FSDPMemTracker)(root, optimizer) if sharded else with_peak_module(MemTracker)()
    others = {name: m for name, m in others.items() if isinstance(m, torch.nn.Module)}
    if sharded:
        register_sharded(tracker, others.values())
    else:
        tracker.track_external(root, optimizer, *others.values())
        no_hook = NoHook()  # MemTracker hooks every parameter's gradient, and a frozen one (the EMA target) refuses
        for p in (p for m in [root, *others.values()] for p in m.parameters()):
            if not p.requires_grad:
                tracker._param_to_grad_hook_handles[p] = (no_hook, no_hook)
    counter = flop_counter()

    def before_forward(module, args):
        # the tracker's per-module statistics hold one forward of each module and refuse a second of root,
        # which every micro-batch runs: cleared before each (not before the EMA target's no-grad pass of the
        # online model with LoRA, whose backward is still to come); the peak and its module are kept apart
        if module is root and torch.is_grad_enabled():
            tracker.reset_mod_stats()

    hook = torch.nn.modules.module.register_module_forward_pre_hook(before_forward)  # before the tracker's own
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with own_propagation_mode(), tracker:
            for i in range(steps):
                with counter if i == steps - 1 else contextlib.nullcontext():
                    run_step()
    finally:
        hook.remove()
        if collecting:
            gc.enable()
    snapshot = tracker.get_tracker_snapshot("peak")
    peak = {getattr(k, "value", str(k)): v for k, v in snapshot[next(iter(snapshot))].items()}
    peak.pop("Total")
    if sharded:  # counted among the sharded parameters by register_sharded: named apart
        for name, module in others.items():
            peak[f"{name} (sharded param)"] = local_bytes(module)
            peak["Sharded Param"] -= local_bytes(module)
    resident = resident_storages([root, *others.values()], optimizer)
    with own_propagation_mode(), LiveBytes(resident) as live:
        run_step()
    return {"peak": peak, "peak_total": sum(peak.values()), "peak_module": tracker.peak_module,
            "flops": counter.get_total_flops(), "peak_total_unhooked": sum(resident.values()) + live.peak}


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensors an operation creates, alive at once at the most: each output's storage
    followed by a weak reference until it is freed, and through its resizes (FSDP2 frees and refills its
    gathered weights by resizing their storages). torch's trackers count the same way but through module
    hooks, and their backward hooks keep tensors alive that a run frees (on one rank, activations of a
    checkpointed 8-layer model grew with each micro-batch of a step under them, and did not here); this
    tracker has no hooks, hence no categories and no module: it gives the plan's total. resident: the
    storages alive before (resident_storages), which views and in-place operations return again: not new."""

    def __init__(self, resident):
        super().__init__()
        self.resident = resident

    def __enter__(self):
        self.live, self.current, self.peak = {}, 0, 0  # live: {id: [weak reference, bytes]}
        resize = self.original_resize = torch.UntypedStorage.resize_

        def resized(storage, size):
            out = resize(storage, size)
            self.grow(id(storage), storage.nbytes())
            return out
        torch.UntypedStorage.resize_ = resized
        return super().__enter__()

    def __exit__(self, *args):
        torch.UntypedStorage.resize_ = self.original_resize
        return super().__exit__(*args)

    def grow(self, key, size):
        """A tracked storage's new size."""
        if key in self.live:
            self.current += size - self.live[key][1]
            self.live[key][1] = size
            self.peak = max(self.peak, self.current)

    def count(self, t):
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live or key in self.resident:
            return

        def freed(_, key=key):
            self.current -= self.live.pop(key)[1]
        self.live[key] = [weakref.ref(storage, freed), 0]
        self.grow(key, storage.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        pytree.tree_map_only(torch.Tensor, self.count, out)
        return out


def resident_storages(modules, optimizer):
    """{id: bytes} of the storages alive between steps: the modules' parameters and buffers (this rank's
    shards) and the optimizer's states."""
    from torch.distributed.tensor import DTensor
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {}
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        storages[id(local.untyped_storage())] = local.untyped_storage().nbytes()
    return storages


def with_peak_module(tracker_class):
    """torch's tracker class with one change: at each new peak it records the module running then (the
    innermost of those the forward or backward is in; OPTIMIZER_STEP when none), where torch's updates every
    module's own peak at every operation: a cost of the number of modules per operation, minutes at 8B with
    LoRA's 700 modules, for a per-module table the plan does not print."""

    class PeakModule(tracker_class):
        peak_module = OPTIMIZER_STEP

        def _update_peak_stats(self, peak_state):
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                    running = [m for m in self._mod_tracker.parents if m != "Global"]
                    self.peak_module = max(running, key=lambda m: m.count("."), default=OPTIMIZER_STEP)

    return PeakModule


def register_sharded(tracker, modules):
    """Count the sharded parameters of FSDP roots other than the tracked one (the EMA target, the predictor)
    as sharded parameters from the start. FSDPMemTracker follows one root and takes no external modules; left
    alone, it met their storages only when an op returned them (FSDP's lazy initialisation inside the first
    forward, the EMA update's in-place lerp) and counted them as activations, on top of their bytes named
    apart. So their lazy initialisation runs here, before the tracker, and their storages are registered."""
    from torch.distributed._tools.fsdp2_mem_tracker import _FSDPRefType
    from torch.distributed.fsdp import FSDPModule
    for module in modules:
        if isinstance(module, FSDPModule):
            module._get_fsdp_state()._lazy_init()
        for p in [*module.parameters(), *module.buffers()]:
            tracker._update_and_maybe_create_winfos(p, _FSDPRefType.SHARDED_PARAM)


class SecondPass(torch.nn.Module):
    """The LoRA EMA target (jepa.AdapterEMATarget) as a module of its own, for the tracker only: its call runs
    the online model a second time before that model's backward, which torch's trackers refuse of a root
    module and take, inside another module, as a submodule used twice in one step. Its EMA adapters are
    registered as buffers so that the tracker counts their bytes (they are plain tensors in the real run).
    The computation is the target's own."""

    def __init__(self, target):
        super().__init__()
        object.__setattr__(self, "target", target)  # not a submodule: the online model is root's
        for i, t in enumerate(target.ema):
            self.register_buffer(f"ema_adapter_{i}", t, persistent=False)

    def forward(self, input_ids, **kwargs):
        return self.target(input_ids, **kwargs)


def trackable(target):
    """The EMA target as the tracker can follow it: a LoRA target wrapped in SecondPass, else itself."""
    return target if target is None or isinstance(target, torch.nn.Module) else SecondPass(target)


class NoHook:
    """Stands for the gradient hooks of a frozen parameter, which has no gradient to watch."""

    def remove(self):
        pass


@contextlib.contextmanager
def own_propagation_mode():
    """DTensor infers an op's output shapes by running it on global-shape tensors in the active fake mode,
    or in a fresh one when none is active (torch/distributed/tensor/_sharding_prop.py). In a real run the
    tracker skips those allocations (another fake mode); in the dry run the active mode is the plan's, and
    the tracker would count them (for the optimizer step: four times its states). So the propagation gets a
    fresh mode here too, as in a real run."""
    from torch.distributed.tensor import _sharding_prop
    detect = _sharding_prop.detect_fake_mode
    _sharding_prop.detect_fake_mode = lambda *args: None
    try:
        yield
    finally:
        _sharding_prop.detect_fake_mode = detect


OPTIMIZER_STEP = "the optimizer step (no module running)"


def local_bytes(module):
    """Bytes of this rank's share of a module's parameters and buffers (an FSDP2 DTensor's local shard)."""
    from torch.distributed.tensor import DTensor
    tensors = [*module.parameters(), *module.buffers()]
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in tensors)


# -----------------------------------------------------------------------------
# the analytic count and the estimates


def linear_shapes(cfg):
    """{name: (in, out)} of each block's linear layers, named as lora.LORA_TARGETS names them."""
    d, q, kv, m = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_hidden
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, m), "up": (d, m), "down": (m, d)}


# the first block's linear layers whose input is the (frozen) embedding: with LoRA nothing before them
# needs a gradient, so their input gradients are never computed
FIRST_INPUTS = ("q", "k", "v")


def forward_flops(cfg, batch, length, logits):
    """A forward of the backbone on batch x length tokens with the LM head at `logits` positions: 2 FLOPs per
    multiply-add of every linear layer, plus attention's two batched products."""
    per_token = cfg.n_layers * sum(i * o for i, o in linear_shapes(cfg).values())
    return 2 * per_token * batch * length + attention_flops(cfg, batch, length) + 2 * cfg.d_model * cfg.vocab_size * logits


def attention_flops(cfg, batch, length):
    """Attention's two batched products (QK^T and AV) in every layer. Its backward is 2.5 times this: the
    gradients' four products and the scores recomputed (flash attention keeps no score matrix)."""
    return 2 * cfg.n_layers * 2 * cfg.n_heads * length * length * cfg.head_dim * batch


def analytic_step_flops(cfg, masked, batch, length, jepa, checkpointing, predictor_layers, lora=None):
    """FLOPs of one optimizer step on one rank, by hand: per micro-batch the online forward F (the LM head at
    its masked positions, `masked` lists them per micro-batch), its backward 2F (input and weight gradients;
    attention's 2.5 times its forward),
    the blocks' forward again under activation checkpointing (but their last layer), and for DLLM-JEPA the EMA
    target's forward (no LM head) and the predictor (k blocks on one vector per example, trained).
    lora = (rank, targets): the frozen base's backward computes input gradients only (none for the first
    block's q, k, v, whose input is the embedding) while attention's backward stays whole, and the
    adapters add their own forward and backward (lora_flops)."""
    n = batch * length
    blocks = forward_flops(cfg, batch, length, 0)
    recompute = recompute_flops(cfg, n, blocks, lora)
    first_inputs = 2 * n * sum(i * o for t, (i, o) in linear_shapes(cfg).items() if t in FIRST_INPUTS)
    total = 0
    for logits in masked:
        forward, attention = forward_flops(cfg, batch, length, logits), attention_flops(cfg, batch, length)
        if lora:
            total += 2 * forward + 1.5 * attention - first_inputs + lora_flops(cfg, n, *lora, jepa)
        else:
            total += 3 * forward + 0.5 * attention
        total += recompute if checkpointing else 0
        if jepa:
            total += blocks + predictor_flops(cfg, predictor_layers, batch)
    return total


def recompute_flops(cfg, tokens, blocks, lora):
    """What activation checkpointing runs again in the backward. Non-reentrant checkpointing stops a block's
    recomputation once the last tensor its backward needs is back: without LoRA the down projection's input,
    so that product is not run again; with LoRA on the down projection the adapter's x A^T, computed after the
    frozen down projection (which does run again), so only its B product is not."""
    down = 2 * cfg.n_layers * cfg.d_model * cfg.mlp_hidden * tokens
    if not lora:
        return blocks - down
    rank, targets = lora
    adapters = lora_forward_flops(cfg, tokens, rank, targets)
    if "down" in targets:
        return blocks + adapters - 2 * tokens * rank * cfg.n_layers * cfg.d_model
    return blocks - down + adapters


def lora_forward_flops(cfg, tokens, rank, targets):
    """The adapters' forward, x A^T B^T in every block."""
    return 2 * tokens * rank * cfg.n_layers * sum(i + o for t, (i, o) in linear_shapes(cfg).items() if t in targets)


def lora_flops(cfg, tokens, rank, targets, jepa):
    """The adapters' FLOPs on one micro-batch: forward, backward twice that (the gradients of A, of B, of A's
    output, and of the input but in the first block's q, k, v), and the EMA adapters' forward."""
    skipped = 2 * tokens * rank * sum(i for t, (i, o) in linear_shapes(cfg).items() if t in targets and t in FIRST_INPUTS)
    return lora_forward_flops(cfg, tokens, rank, targets) * (4 if jepa else 3) - skipped


def head_flops(cfg, lora):
    """FLOPs of the LM head per masked position in a micro-batch's forward and backward: the forward, the
    input gradient, and (full fine-tuning) the weight gradient."""
    return 2 * cfg.d_model * cfg.vocab_size * (2 if lora else 3)


def whole_step_flops(counted, first, last, masked, head):
    """The FLOPs of a step of len(masked) micro-batches from those counted on its first and last alone:
    every micro-batch costs the same but `head` FLOPs per masked position (masked: the positions of each
    micro-batch; first, last: those of the two counted)."""
    common = (counted - head * (first + last)) / 2
    return common * len(masked) + head * sum(masked)


def predictor_flops(cfg, layers, vectors):
    """The predictor's forward and backward: k blocks on `vectors` sequences of length one, attention over
    one position (its backward 2.5 times its forward, as everywhere)."""
    linear = 2 * layers * vectors * sum(i * o for i, o in linear_shapes(cfg).values())
    attention = layers * 4 * cfg.n_heads * cfg.head_dim * vectors
    return 3 * linear + 3.5 * attention


def estimates(flops_per_rank, tokens_per_step, steps_per_epoch, mfu=MFU):
    """{gpu: {'step_s', 'tokens_per_s', 'epoch_s'}}: time per optimizer step on each GPU at `mfu` of its
    peak (every rank does its share at once)."""
    out = {}
    for gpu, peak in GPU_PEAK_FLOPS.items():
        step = flops_per_rank / (peak * mfu)
        out[gpu] = {"step_s": step, "tokens_per_s": tokens_per_step / step if step else math.inf,
                    "epoch_s": step * steps_per_epoch}
    return out


# -----------------------------------------------------------------------------
# the advice and the report


def fit_candidates(world, batch_size, checkpointing, reduce_helps, lora_rank):
    """The settings the fit advice plans, nearest first: activation checkpointing on, then the gradients
    reduce-scattered every micro-batch (reduce_helps: there are several and they are not yet), then the
    per-GPU batch halved down to 1 (the effective batch kept by accumulation), then, for full fine-tuning,
    LoRA at LORA_ADVICE_RANK (a frozen bfloat16 base: another method than the paper's, named as such), at the
    batch and at 1, then twice, four and eight times the ranks at batch 1."""
    on = {"activation_checkpointing": True}
    candidates = [] if checkpointing else [dict(on)]
    if reduce_helps:
        on["reduce_every_micro_batch"] = True
        candidates.append(dict(on))
    b = batch_size
    while b > 1:
        b //= 2
        candidates.append(on | {"batch_size": b, "reduce_every_micro_batch": True})
    if not lora_rank:
        candidates += [on | {"lora_rank": LORA_ADVICE_RANK, "batch_size": size, "reduce_every_micro_batch": True}
                       for size in dict.fromkeys((batch_size, 1))]
    return candidates + [on | {"batch_size": 1, "reduce_every_micro_batch": True, "dry_run_world": world * k}
                         for k in (2, 4, 8)]


def print_plan(report):
    """The plan as a table (report: train.py's, with its settings)."""
    p, s = report["plan"], report["settings"]
    gib = lambda b: f"{b / 2 ** 30:8.2f} GiB"  # noqa: E731
    print(f"dry run: {s['model']} ({report['model_config_from']}), task {s['task']}, {p['world']} rank(s) x batch "
          f"{p['batch_size']} x accum {p['grad_accum']} x {p['max_len']} tokens, activation checkpointing "
          f"{p['activation_checkpointing']}, LoRA rank {p['lora_rank']}, lambda {s['jepa_weight']}")
    print("peak memory on one rank, by category (torch's memory tracker; its hooks keep some activations alive):")
    for name, value in p["peak"].items():
        print(f"  {name:28} {gib(value)}")
    print(f"  {'total':28} {gib(p['peak_total'])}   at {p['peak_module']}")
    print(f"  {'total without its hooks':28} {gib(p['peak_total_unhooked'])}   (LiveBytes: what the plan needs)")
    print(f"FLOPs per optimizer step, one rank: {p['flops']:.4g} counted, {p['analytic_flops']:.4g} by hand; "
          f"{p['flops_per_token']:.4g} per trained token")
    for gpu, e in p["estimates"].items():
        epoch = f", epoch ({p['steps_per_epoch']} steps) {e['epoch_s'] / 3600:.2f} h" if p["steps_per_epoch"] else ""
        print(f"  {gpu} at MFU {MFU}: {e['step_s']:.2f} s a step, {e['tokens_per_s']:,.0f} tokens/s{epoch}")
    print(f"needs {p['needs_gib']:.1f} GiB a GPU ({RESERVE_GIB:g} GiB reserve included): "
          f"{'fits' if p['fits'] else 'does not fit'} --gpu_memory={s['gpu_memory']:g}")
    if "largest_batch" in report:
        big = report["largest_batch"]
        print(f"largest per-GPU batch that fits (accumulation 1, powers of two): "
              f"{'at least ' if big.get('at_least') else ''}{big['batch_size']}"
              + (f" ({big['needs_gib']:.1f} GiB)" if big["batch_size"] else ""))
    if "nearest_fit" in report:
        fit = report["nearest_fit"]
        print("nearest setting that fits: " + (" ".join(f"--{k}={v}" for k, v in fit["settings"].items())
                                               + f" ({fit['needs_gib']:.1f} GiB)" if "settings" in fit else fit["none"]))
