"""
LLaDA's low-confidence remasking sampler (LLaDA's public generate.py, github.com/ML-GSAI/LLaDA), batched.

  canvas = prompt + gen_length [MASK]s, filled block by block, left to right
  each block: steps / n_blocks steps; each step predicts every masked position of the block (x0 = argmax
  of the logits, Gumbel-max with temperature), and commits the most confident ones (confidence = the
  softmax probability of x0), as many as num_transfer_tokens says for that step

Used by evaluate.py (the paper's evaluation) and bench.py (its speed).
"""

import math

import torch
import torch.nn.functional as F


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


@torch.no_grad()
def generate(model, prompts, *, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
             generator=None, on_step=None, stop_ids=None, stats=None):
    """Generate gen_length tokens after each prompt (lists of token ids of any lengths), batched.
    Rows are laid out prompt + canvas and right-padded to the longest, with the padding hidden from
    attention, so every row sees the positions and keys it would see alone. Logits are computed only for
    the current block. Returns a (B, gen_length) tensor. on_step(canvas), if given, sees every step.

    Early stop (stop_ids given): blocks are filled left to right and a committed token never changes, so
    once a finished block holds a row's first stop token (EOS, end-of-turn), every token up to it is final;
    the row leaves the batch and its positions after that token are returned as that token. Greedy outputs
    up to the first stop token are those of the full run (the rows never interact); with temperature the
    distribution is the same; the draws are too when each row has its own generator.

    generator: None, one torch.Generator for the batch, or a list of one per prompt. With one per prompt
    a row draws its noise from its own generator only, and draws the same amount whatever else is in the
    batch (every active row runs every step of a block), so with temperature a prompt's output does not
    depend on the batch it is in, on the early stop, or on where an interrupted evaluation resumed.
    stats, a dict if given, receives rows_blocks_run and rows_blocks_total."""
    cfg = model.cfg
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} must be a multiple of block_length {block_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
    steps_per_block = steps // n_blocks
    dev = next(model.parameters()).device
    B, lengths = len(prompts), [len(p) for p in prompts]
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"{len(generator)} generators for {B} prompts: pass one per prompt, or one for the batch")
    T = max(lengths) + gen_length
    x = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        x[b, :len(p)] = torch.tensor(p, dtype=torch.long, device=dev)
        x[b, len(p):len(p) + gen_length] = cfg.mask_token_id
    stops = torch.tensor(sorted(stop_ids or ()), dtype=torch.long, device=dev)
    active, run = list(range(B)), 0
    for block in range(n_blocks):
        if not active:
            break
        rows = torch.tensor(active, device=dev)
        width = max(lengths[b] for b in active) + gen_length  # the active rows' canvas, less padding
        canvas = x[rows, :width]

        def show(c):  # on_step sees the whole canvas, with this block's rows as they are now
            x[rows, :width] = c
            on_step(x.clone())
        fill_block(model, canvas, torch.tensor([lengths[b] for b in active], device=dev), block * block_length,
                   block_length, steps_per_block, gen_length, temperature, cfg_scale,
                   [generator[b] for b in active] if isinstance(generator, (list, tuple)) else generator,
                   show if on_step is not None else None)
        x[rows, :width] = canvas
        run += len(active)
        if len(stops):
            done = finished_rows(canvas, [lengths[b] for b in active], (block + 1) * block_length, stops)
            active = [b for b, d in zip(active, done) if not d]
    if stats is not None:
        stats.update(rows_blocks_run=run, rows_blocks_total=B * n_blocks)
    out = torch.stack([x[b, n:n + gen_length] for b, n in enumerate(lengths)])
    return fill_after_stop(out, stops, cfg.mask_token_id) if len(stops) else out


def fill_block(model, x, prompt_len, offset, block_length, steps_per_block, gen_length, temperature, cfg_scale,
               generator, on_step):
    """Run one block's steps on the canvas x (B, T) in place: the block starts `offset` tokens after each
    row's prompt. Each step commits each row's most confident masked positions, as many as its schedule
    says."""
    cfg, dev = model.cfg, x.device
    B, T = x.shape
    positions = torch.arange(T, device=dev)[None, :]
    real = positions < (prompt_len + gen_length)[:, None]  # False on the right padding
    is_prompt = positions < prompt_len[:, None]
    rows = torch.arange(B, device=dev)[:, None]
    block_pos = (prompt_len + offset)[:, None] + torch.arange(block_length, device=dev)[None, :]  # (B, L)
    in_block = torch.zeros(B, T, dtype=torch.bool, device=dev)
    in_block[rows, block_pos] = True
    schedule = num_transfer_tokens((x[rows, block_pos] == cfg.mask_token_id).sum(1), steps_per_block)
    most = schedule.max(dim=0).values.tolist()  # per step, the largest k of any row (one sync per block)
    for step in range(steps_per_block):
        if cfg_scale > 0:  # unconditional copy: the prompt masked
            x_uncond = torch.where(is_prompt, cfg.mask_token_id, x)
            both = model(torch.cat([x, x_uncond]), padding_mask=torch.cat([real, real]),
                         logits_at=torch.cat([in_block, in_block])).logits.view(2, B, block_length, -1)
            logits = both[1] + (cfg_scale + 1) * (both[0] - both[1])
        else:
            logits = model(x, padding_mask=real, logits_at=in_block).logits.view(B, block_length, -1)
        x0 = add_gumbel_noise(logits, temperature, generator).argmax(dim=-1)  # (B, L)
        # confidence in float32 whatever the model's dtype (LLaDA's generate.py now takes the logits' dtype:
        # in bf16 many confidences tie at 1.0 and the tie-break decides)
        confidence = F.softmax(logits.float(), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        current = x[rows, block_pos]
        still_masked = current == cfg.mask_token_id
        confidence = torch.where(still_masked, confidence, -math.inf)
        # top-k per row with k from the row's schedule: one top-k at the largest k, keeping each row's first k
        commit = torch.zeros_like(still_masked)
        if most[step]:
            top = torch.topk(confidence, most[step], dim=1).indices
            commit.scatter_(1, top, torch.arange(most[step], device=dev)[None, :] < schedule[:, step, None])
        x[rows, block_pos] = torch.where(commit, x0, current)
        if on_step is not None:
            on_step(x)


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
