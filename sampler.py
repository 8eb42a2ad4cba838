"""
LLaDA's low-confidence remasking sampler (LLaDA's public generate.py, github.com/ML-GSAI/LLaDA), batched.

  canvas = prompt + gen_length [MASK]s, filled block by block, left to right
  each block: steps / n_blocks steps; each step predicts every masked position of the block (x0 = argmax
  of the logits, Gumbel-max with temperature), and commits the most confident ones (confidence = the
  softmax probability of x0), as many as num_transfer_tokens says for that step

Options that trade exactness for speed, all off by default (Decoding says each one's rule): Fast-dLLM's
confidence threshold and its prefix / dual KV cache (NVlabs/Fast-dLLM, arXiv:2505.22618), and LLaDA's own
random remasking and EOS / end-of-turn suppression. Off, the outputs are the exact sampler's bit for bit.

Used by evaluate.py (the paper's evaluation) and bench.py (its speed).
"""

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from model import KVCache


def add_gumbel_noise(logits, temperature, generator=None):
    """LLaDA's Gumbel-max in float64 (low precision Gumbel noise degrades quality): argmax of
    exp(logits) / (-log u)^temperature samples from softmax(logits / temperature). generator: one for the
    batch (LLaDA's way: the draws depend on the batch), or a list, one per row of logits (each row's
    draws its own: the same in any batch)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    if isinstance(generator, (list, tuple)):
        noise = torch.stack([torch.rand(logits.shape[1:], generator=g, device=logits.device, dtype=torch.float64)
                             for g in generator])
    else:
        noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    return logits.exp() / (-torch.log(noise)) ** temperature


def num_transfer_tokens(masked_count, steps):
    """Per row: m // steps tokens every step, plus one more in the first m % steps steps. (B,) -> (B, steps)."""
    base = masked_count // steps
    extra = masked_count % steps
    schedule = base[:, None].repeat(1, steps)
    schedule += (torch.arange(steps, device=masked_count.device)[None, :] < extra[:, None]).long()
    return schedule


class Decoding(NamedTuple):
    """How each step picks and commits tokens. The defaults are LLaDA's generate.py as the paper ran it.

    threshold   0: commit as many tokens per step as the step schedule says (LLaDA). > 0: commit every
                masked token of the block whose confidence is at least the threshold, and at least the
                most confident one, until the block is full (Fast-dLLM's parallel decoding,
                NVlabs/Fast-dLLM llada/generate.py, arXiv:2505.22618): fewer steps, not the same outputs.
                Its confidences are float64, as Fast-dLLM's (the default sampler's float32)
    remasking   'low_confidence' (LLaDA's default: confidence = the softmax probability of the token drawn)
                or 'random' (confidence drawn uniformly: LLaDA's other option)
    logits_eos_inf          LLaDA's generate.py option: EOS can never be drawn (its logit is -inf)
    confidence_eos_eot_inf  LLaDA's generate.py option: after the draw, the end-of-turn logit is set to
                -inf before the softmax, so a drawn end-of-turn has confidence 0 and is committed last.
                (LLaDA's line also sets EOS to -inf in the noisy logits, which nothing reads after the
                draw; equal to the file, that part changes nothing here either.)
    cache       'none' (every step runs the whole canvas). 'prefix' | 'dual': Fast-dLLM's approximate KV
                cache, refreshed once per block: the block's first step runs the whole canvas and keeps every
                layer's keys and values; its later steps run only the block and what follows it ('prefix',
                attending to the cached keys before the block) or only the block ('dual', attending to the
                cached keys before and after it). With the Dream logit shift the token before the block is
                run too, so the block's first logits come from its hidden state as in a full forward.
                On Dream every option keeps LLaDA's rule; Fast-dLLM's Dream functions do not: they commit
                a block's first token at its refresh forward whatever its confidence, and follow Dream's
                own step rule without a threshold (docs/pieces.md)
    """
    temperature: float = 0.0
    cfg_scale: float = 0.0
    threshold: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eot_id: Optional[int] = None  # needed by confidence_eos_eot_inf
    cache: str = "none"

    def check(self):
        """Raise ConfigError (a ValueError) naming the option (as evaluate.py's flag) that cannot run."""
        if self.temperature < 0 or self.cfg_scale < 0 or not 0 <= self.threshold <= 1:
            raise ConfigError(f"need --temperature >= 0, --cfg_scale >= 0 and --threshold in [0, 1]; got "
                              f"{self.temperature}, {self.cfg_scale}, {self.threshold}")
        if self.remasking not in REMASKING:
            raise ConfigError(f"--remasking={self.remasking!r} is not one of {', '.join(REMASKING)}")
        if self.cache not in CACHES:
            raise ConfigError(f"--cache={self.cache!r} is not one of {', '.join(CACHES)}")
        if self.cache != "none" and self.cfg_scale > 0:
            raise ConfigError("--cache runs without classifier-free guidance (as Fast-dLLM's): set --cfg_scale 0 "
                              "or --cache none")
        if self.confidence_eos_eot_inf and self.eot_id is None:
            raise ConfigError("--confidence_eos_eot_inf needs the end-of-turn token, which this tokenizer lacks")
        return self


REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


def check_schedule(gen_length, block_length, steps, flags="--"):
    """Raise ConfigError (a ValueError) unless the canvas splits into whole blocks and the steps into equal
    shares of them, as LLaDA's generate.py asserts. Scripts call it on their flags (named `flags` + the
    name) before a model loads, so a schedule that cannot run costs no load."""
    names = {k: f"{flags}{k}" for k in ("gen_length", "block_length", "steps")}
    for key, value in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if value < 1:
            raise ConfigError(f"{names[key]}={value} must be >= 1")
    if gen_length % block_length:
        raise ConfigError(f"{names['gen_length']}={gen_length} must be a multiple of {names['block_length']}="
                          f"{block_length}")
    if steps % (gen_length // block_length):
        raise ConfigError(f"{names['steps']}={steps} must be a multiple of the number of blocks, "
                          f"{names['gen_length']} / {names['block_length']} = {gen_length // block_length}")


@torch.no_grad()
def generate(model, prompts, *, steps, gen_length, block_length, decoding=Decoding(), generator=None, on_step=None,
             stop_ids=None, stats=None):
    """Generate gen_length tokens after each prompt (lists of token ids of any lengths), batched.
    Rows are laid out prompt + canvas and right-padded to the longest, with the padding hidden from
    attention, so every row sees the positions and keys it would see alone. Logits are computed only for
    the current block. Returns a (B, gen_length) tensor. on_step(canvas), if given, sees every step.
    decoding: how each step picks and commits tokens (Decoding: temperature, classifier-free guidance and
    the fast-decoding options; the default is LLaDA's exact greedy sampler).

    Early stop (stop_ids given): blocks are filled left to right and a committed token never changes, so
    once a finished block holds a row's first stop token (EOS, end-of-turn), every token up to it is final;
    the row leaves the batch and its positions after that token are returned as that token. Greedy outputs
    up to the first stop token are those of the full run (the rows never interact); with temperature the
    distribution is the same; the draws are too when each row has its own generator.

    generator: None, one torch.Generator for the batch, or a list of one per prompt. With one per prompt
    a row draws its noise from its own generator only, and draws the same amount whatever else is in the
    batch (a row takes part in a step exactly when it would alone), so with temperature or random
    remasking a prompt's output does not depend on the batch it is in, on the early stop, or on where an
    interrupted evaluation resumed.
    stats, a dict if given, receives rows_blocks_run and rows_blocks_total, and nfe: per row, the forward
    passes it took part in (its number of function evaluations, as if it ran alone)."""
    opts = decoding.check()
    spec = model.cfg
    check_schedule(gen_length, block_length, steps)
    n_blocks = gen_length // block_length
    steps_per_block = steps // n_blocks
    dev = next(model.parameters()).device
    B, lengths = len(prompts), [len(p) for p in prompts]
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"{len(generator)} generators for {B} prompts: pass one per prompt, or one for the batch")
    T = max(lengths) + gen_length
    x = torch.full((B, T), spec.pad_token_id, dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        x[b, :len(p)] = torch.tensor(p, dtype=torch.long, device=dev)
        x[b, len(p):len(p) + gen_length] = spec.mask_token_id
    stops = torch.tensor(sorted(stop_ids or ()), dtype=torch.long, device=dev)
    active, run, nfe = list(range(B)), 0, [0] * B
    for block in range(n_blocks):
        if not active:
            break
        rows = torch.tensor(active, device=dev)
        width = max(lengths[b] for b in active) + gen_length  # the active rows' canvas, less padding
        canvas = x[rows, :width]

        def show(c):  # on_step sees the whole canvas, with this block's rows as they are now
            x[rows, :width] = c
            on_step(x.clone())
        taken = fill_block(model, canvas, torch.tensor([lengths[b] for b in active], device=dev),
                           block * block_length, block_length, steps_per_block, gen_length, opts,
                           [generator[b] for b in active] if isinstance(generator, (list, tuple)) else generator,
                           show if on_step is not None else None)
        for b, n in zip(active, taken):
            nfe[b] += n
        x[rows, :width] = canvas
        run += len(active)
        if len(stops):
            done = finished_rows(canvas, [lengths[b] for b in active], (block + 1) * block_length, stops)
            active = [b for b, d in zip(active, done) if not d]
    if stats is not None:
        stats.update(rows_blocks_run=run, rows_blocks_total=B * n_blocks, nfe=nfe)
    out = torch.stack([x[b, n:n + gen_length] for b, n in enumerate(lengths)])
    return fill_after_stop(out, stops, spec.mask_token_id) if len(stops) else out


def fill_block(model, x, prompt_len, offset, block_length, steps_per_block, gen_length, opts, generator, on_step):
    """Run one block's steps on the canvas x (B, T) in place: the block starts `offset` tokens after each
    row's prompt. Each step commits each row's most confident masked positions: as many as its schedule
    says, or (threshold) every one at least that confident and at least one. Returns, per row, the steps
    (forward passes) it took part in: with a threshold a row whose block is full leaves the step."""
    spec, dev = model.cfg, x.device
    B, T = x.shape
    positions = torch.arange(T, device=dev)[None, :]
    real = positions < (prompt_len + gen_length)[:, None]  # False on the right padding
    is_prompt = positions < prompt_len[:, None]
    block_pos = (prompt_len + offset)[:, None] + torch.arange(block_length, device=dev)[None, :]  # (B, L)
    in_block = torch.zeros(B, T, dtype=torch.bool, device=dev)
    in_block[torch.arange(B, device=dev)[:, None], block_pos] = True
    schedule = num_transfer_tokens((x.gather(1, block_pos) == spec.mask_token_id).sum(1), steps_per_block)
    most = schedule.max(dim=0).values.tolist()  # per step, the largest k of any row (one sync per block)
    taken, step = [0] * B, 0
    while step < (block_length if opts.threshold else steps_per_block):
        live = torch.arange(B, device=dev)
        if opts.threshold:  # only the rows with masks left in the block (one sync per step)
            live = live[(x.gather(1, block_pos) == spec.mask_token_id).any(1)]
            if not len(live):
                break
        for b in live.tolist():
            taken[b] += 1
        rows = live[:, None]
        if opts.cache == "none":
            logits = block_logits(model, x[live], real[live], in_block[live], is_prompt[live], opts.cfg_scale)
        elif step == 0:  # the block's first step: the whole canvas, its keys and values kept for the rest
            logits, kv = cached_block_logits(model, x, real, in_block, prompt_len + offset, block_length, opts.cache)
        else:
            logits = cached_block_logits(model, x[live], None, None, (prompt_len + offset)[live], block_length,
                                         opts.cache, kv.select(live))
        gens = [generator[b] for b in live.tolist()] if isinstance(generator, (list, tuple)) else generator
        current = x[rows, block_pos[live]]
        x0, confidence = draw(logits, current == spec.mask_token_id, opts, gens, spec.eos_token_id)
        commit = threshold_commit(confidence, opts.threshold) if opts.threshold else \
            scheduled_commit(confidence, schedule[live, step], most[step])
        x[rows, block_pos[live]] = torch.where(commit, x0, current)
        step += 1
        if on_step is not None:
            on_step(x)
    return taken


def block_logits(model, x, real, in_block, is_prompt, cfg_scale):
    """(B, L, V) logits at the block's positions; with guidance, also run with the prompt masked."""
    B, L = x.shape[0], int(in_block[0].sum())
    if cfg_scale > 0:  # unconditional copy: the prompt masked
        x_uncond = torch.where(is_prompt, model.cfg.mask_token_id, x)
        both = model(torch.cat([x, x_uncond]), padding_mask=torch.cat([real, real]),
                     logits_at=torch.cat([in_block, in_block])).logits.view(2, B, L, -1)
        return both[1] + (cfg_scale + 1) * (both[0] - both[1])
    return model(x, padding_mask=real, logits_at=in_block).logits.view(B, L, -1)


class BlockCache(NamedTuple):
    """What the block's first step keeps: model.KVCache over the whole canvas (B rows), and for each row
    the first position the later steps run (`first`, the block start, or the token before it with the
    Dream shift) and how many they run (`width`)."""
    kv: object
    first: torch.Tensor
    width: int

    def select(self, rows):
        return BlockCache(KVCache([(k[rows], v[rows]) for k, v in self.kv.layers], self.kv.visible[rows]),
                          self.first[rows], self.width)


def cached_block_logits(model, x, real, in_block, block_start, block_length, mode, cache=None):
    """(B, L, V) logits at the block with Fast-dLLM's cache. Without `cache` (the block's first step): the
    whole canvas runs and (logits, BlockCache) is returned. With it: only the rows' slices
    [first, first + width) run, at their own positions, attending to the cached keys the mode leaves
    visible: for 'prefix' those before `first`, for 'dual' every real one outside the slice."""
    lead = 1 if model.cfg.shift_logits else 0  # Dream: logits at i come from hidden state i - 1
    B = x.shape[0]
    if cache is None:
        out = model(x, padding_mask=real, logits_at=in_block, return_kv=True)
        first = block_start - lead
        width = int((real.sum(1) - first).max()) if mode == "prefix" else block_length + lead
        positions = torch.arange(x.shape[1], device=x.device)[None, :]
        visible = positions < first[:, None] if mode == "prefix" else \
            real & ((positions < first[:, None]) | (positions >= (first + width)[:, None]))
        return out.logits.view(B, block_length, -1), BlockCache(KVCache(out.kv, visible), first, width)
    cols = cache.first[:, None] + torch.arange(cache.width, device=x.device)[None, :]
    at = torch.zeros(B, cache.width, dtype=torch.bool, device=x.device)
    at[:, lead:lead + block_length] = True
    out = model(x.gather(1, cols), positions=cols, cache=cache.kv, logits_at=at)
    return out.logits.view(B, block_length, -1)


def draw(logits, masked, opts, generator, eos_id):
    """(x0, confidence), both (B, L): the token drawn at each position (argmax, Gumbel-max with
    temperature) and how sure the step is of it, -inf where the position is already committed."""
    if opts.logits_eos_inf:
        logits[..., eos_id] = -math.inf
    x0 = add_gumbel_noise(logits, opts.temperature, generator).argmax(dim=-1)
    if opts.confidence_eos_eot_inf:
        logits[..., opts.eot_id] = -math.inf
    if opts.remasking == "random":
        confidence = uniform(x0.shape, generator, logits.device)
    else:
        # confidence in float32 whatever the model's dtype (LLaDA's generate.py now takes the logits' dtype:
        # in bf16 many confidences tie at 1.0 and the tie-break decides); float64 under a threshold, as
        # Fast-dLLM's get_transfer_index: at threshold 1.0 a float32 confidence of 1 - 2e-9 rounds to 1 and
        # would commit where Fast-dLLM's does not
        precision = torch.float64 if opts.threshold else torch.float32
        confidence = F.softmax(logits.to(precision), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    return x0, torch.where(masked, confidence, -math.inf)


def uniform(shape, generator, device):
    """U(0, 1) float32 of shape (B, L): from one generator (or torch's global one), or a row per generator."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.rand(shape[1:], generator=g, device=device) for g in generator])
    return torch.rand(shape, generator=generator, device=device)


def top_positions(confidence, k):
    """Each row's k most confident positions, (B, k), ties to the earlier position. LLaDA's torch.topk
    leaves the order of ties to the implementation (they occur: confidence_eos_eot_inf gives every drawn
    end-of-turn confidence 0); a stable sort makes them one rule, the same in a batch and alone."""
    return torch.sort(confidence, dim=1, descending=True, stable=True).indices[:, :k]


def scheduled_commit(confidence, k, most):
    """LLaDA's rule: each row's k[b] most confident positions (B, L) bool; one top-k at the largest k of
    any row (`most`), each row keeping its first k[b]."""
    commit = torch.zeros_like(confidence, dtype=torch.bool)
    if most:
        top = top_positions(confidence, most)
        commit.scatter_(1, top, torch.arange(most, device=confidence.device)[None, :] < k[:, None])
    return commit


def threshold_commit(confidence, threshold):
    """Fast-dLLM's rule: every position at least `threshold` confident, and each row's most confident one
    (so a step always commits). Committed positions carry -inf and are never chosen."""
    top = top_positions(confidence, 1)
    commit = confidence >= threshold
    commit.scatter_(1, top, torch.isfinite(confidence.gather(1, top)))
    return commit


def finished_rows(canvas, prompt_lengths, filled, stops):
    """For each row of the canvas: whether its first `filled` generated tokens (all committed) hold a stop
    token, so that what will be scored is final. One sync."""
    gen = torch.stack([canvas[i, n:n + filled] for i, n in enumerate(prompt_lengths)])
    return torch.isin(gen, stops).any(dim=1).tolist()


def fill_after_stop(out, stops, mask_token_id):
    """Positions a finished row left masked after its first stop token take that token."""
    is_stop = torch.isin(out, stops)
    has = is_stop.any(dim=1)
    first = torch.where(has, is_stop.float().argmax(dim=1), out.shape[1])
    after = torch.arange(out.shape[1], device=out.device)[None, :] > first[:, None]
    token = out.gather(1, first.clamp(max=out.shape[1] - 1)[:, None]).expand_as(out)
    return torch.where(after & (out == mask_token_id), token, out)


def cut_at_stop(ids, stop_ids):
    """The generated ids up to (not including) the first EOS or end-of-turn token."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i]
    return ids
