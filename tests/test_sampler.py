"""sampler.py: LLaDA's low-confidence remasking sampler on a tiny model: the schedule, frozen tokens,
batched = one prompt at a time (both layouts, with and without guidance), temperature."""

import math

import pytest
import torch
from conftest import dream_layout, small_config

import model as M
import sampler as S

SMALL = small_config(vocab_size=48, d_model=32, mlp_hidden=64)
MASK = SMALL.mask_token_id


def tiny_model(layout="llada", seed=0):
    cfg = SMALL if layout == "llada" else dream_layout(SMALL)
    torch.manual_seed(seed)
    model = M.Transformer(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so confidences differ clearly
        model.lm_head.weight.mul_(50)
    return model


PROMPTS = [[2, 5, 6, 7], [2, 9], [2, 11, 12, 13, 14, 15, 16]]


def decode(model, prompts, **kwargs):
    """S.generate with the decoding options written as keywords (the tests' shorthand), passed to it as the
    one Decoding it takes."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in S.Decoding._fields}
    return S.generate(model, prompts, decoding=S.Decoding(**options), **kwargs)


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_sampler_schedule_and_frozen_tokens(layout):
    model = tiny_model(layout)
    canvases = []
    out = decode(model, PROMPTS, steps=8, gen_length=16, block_length=8, on_step=canvases.append)
    assert out.shape == (3, 16) and not (out == MASK).any()
    assert len(canvases) == 8
    previous = None
    for step, canvas in enumerate(canvases):
        block, j = divmod(step, 4)
        for b, p in enumerate(PROMPTS):
            row = canvas[b]
            assert row[:len(p)].tolist() == p  # the prompt never changes
            gen = row[len(p):len(p) + 16]
            before = previous[b][len(p):len(p) + 16] if previous is not None else torch.full((16,), MASK)
            newly = (before == MASK) & (gen != MASK)
            assert int(newly.sum()) == 2  # 8 masked per block / 4 steps per block
            assert not newly[:block * 8].any() and not newly[(block + 1) * 8:].any()  # only the current block
            committed = before != MASK
            assert torch.equal(gen[committed], before[committed])  # committed tokens never change
        previous = canvas
    assert torch.equal(out, decode(model, PROMPTS, steps=8, gen_length=16, block_length=8))  # deterministic


def test_uneven_schedule():
    # m = 8 masked, 3 steps: 3, 3, 2 (one extra in the first m % steps steps)
    assert S.num_transfer_tokens(torch.tensor([8, 6, 1]), 3).tolist() == [[3, 3, 2], [2, 2, 2], [1, 0, 0]]
    model = tiny_model()
    counts = []
    decode(model, PROMPTS[:1], steps=3, gen_length=8, block_length=8,
               on_step=lambda c: counts.append(int((c[0, 4:] != MASK).sum())))
    assert counts == [3, 6, 8]


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_batched_equals_one_by_one(layout, cfg_scale):
    model = tiny_model(layout)
    kwargs = dict(steps=8, gen_length=16, block_length=8, cfg_scale=cfg_scale)
    batched = decode(model, PROMPTS, **kwargs)
    for b, p in enumerate(PROMPTS):
        assert torch.equal(batched[b], decode(model, [p], **kwargs)[0])


def test_block_logits_equal_whole_sequence_logits():
    # what the sampler computes for the block equals the whole-sequence logits at those positions
    model = tiny_model()
    ids = torch.randint(3, 48, (2, 12))
    at = torch.zeros(2, 12, dtype=torch.bool)
    at[:, 4:8] = True
    with torch.no_grad():
        assert torch.allclose(model(ids, logits_at=at).logits.view(2, 4, -1), model(ids).logits[:, 4:8], atol=1e-5)


def test_temperature_sampling_follows_the_distribution():
    logits = torch.tensor([[[0.0, 1.0, 2.0]]]).repeat(1, 20000, 1)
    g = torch.Generator().manual_seed(0)
    picks = S.add_gumbel_noise(logits, 1.0, g).argmax(-1).flatten()
    freq = torch.bincount(picks, minlength=3).double() / picks.numel()
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 0), atol=0.015)
    assert torch.equal(S.add_gumbel_noise(logits, 0.0), logits)


def test_bad_block_and_step_settings():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple of --block_length"):
        decode(model, PROMPTS, steps=8, gen_length=12, block_length=8)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        decode(model, PROMPTS, steps=3, gen_length=16, block_length=8)


def test_cut_at_stop():
    assert S.cut_at_stop([5, 6, 0, 7, 0], {0}) == [5, 6]
    assert S.cut_at_stop([5, 9, 6], {0, 9}) == [5]
    assert S.cut_at_stop([5, 6], {0}) == [5, 6]


# --- early stop: rows whose scored output is final leave the batch ---


def stop_sets(full):
    """Stop tokens chosen from a full run: one row commits it in its first block, one a row meets first in
    its last block, one no row generates."""
    early = int(full[0, 0])
    late = next(int(t) for r in range(full.shape[0]) for t in full[r, 12:].tolist()
                if t not in full[r, :12].tolist())
    never = next(t for t in range(3, 48) if t not in full.flatten().tolist() and t != MASK)
    return {"early": {early}, "late": {late}, "never": {never}}


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("seed", [0, 2])
def test_early_stop_keeps_every_cut_output(layout, cfg_scale, seed):
    model = tiny_model(layout, seed)
    kwargs = dict(steps=8, gen_length=16, block_length=4, cfg_scale=cfg_scale)  # 4 blocks, 2 steps each
    full = decode(model, PROMPTS, **kwargs)
    for name, stops in stop_sets(full).items():
        stats = {}
        early = decode(model, PROMPTS, stop_ids=stops, stats=stats, **kwargs)
        for r in range(len(PROMPTS)):
            cut = S.cut_at_stop(full[r].tolist(), stops)
            assert S.cut_at_stop(early[r].tolist(), stops) == cut, (name, r)
            assert early[r, :len(cut) + 1].tolist() == full[r, :len(cut) + 1].tolist()  # the stop token too
            assert not (early[r] == MASK).any()  # what is left after the stop token is that token
        assert stats["rows_blocks_total"] == 3 * 4
        if name == "never":
            assert stats["rows_blocks_run"] == 12
        if name == "early":
            assert stats["rows_blocks_run"] < 12  # row 0 ran one block


def test_a_finished_row_never_changes_again():
    model = tiny_model(seed=2)  # its full run: rows 1 and 2 commit token 14 in block 0, row 0 never does
    kwargs = dict(steps=8, gen_length=16, block_length=4)
    full = decode(model, PROMPTS, **kwargs)
    assert 14 in full[1, :4].tolist() and 14 in full[2, :4].tolist() and 14 not in full[0].tolist()
    canvases = []
    decode(model, PROMPTS, stop_ids={14}, on_step=canvases.append, **kwargs)
    assert len(canvases) == 8
    for r in (1, 2):  # finished with block 0 (steps 0-1): unchanged in every later step
        assert all(torch.equal(c[r], canvases[1][r]) for c in canvases[2:])
    assert not all(torch.equal(c[0], canvases[1][0]) for c in canvases[2:])  # row 0 went on


def test_no_stop_tokens_is_the_plain_sampler():
    model = tiny_model()
    kwargs = dict(steps=8, gen_length=16, block_length=8)
    assert torch.equal(decode(model, PROMPTS, **kwargs), decode(model, PROMPTS, stop_ids=set(), **kwargs))


# --- per-row generators: with temperature, a prompt's output is its own ---


def row_generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_with_one_generator_per_row_temperature_sampling_is_batch_independent(layout, cfg_scale):
    model = tiny_model(layout)
    kwargs = dict(steps=8, gen_length=16, block_length=4, temperature=1.0, cfg_scale=cfg_scale)
    seeds = [11, 22, 33]
    batched = decode(model, PROMPTS, generator=row_generators(seeds), **kwargs)
    for b, p in enumerate(PROMPTS):  # alone, and in another batch order beside another prompt
        assert torch.equal(batched[b], decode(model, [p], generator=row_generators([seeds[b]]), **kwargs)[0])
    other = decode(model, [PROMPTS[2], PROMPTS[0]], generator=row_generators([33, 11]), **kwargs)
    assert torch.equal(other[0], batched[2]) and torch.equal(other[1], batched[0])
    # the early stop leaves the draws of the rows that stay alone: every cut output as in the full run
    stops = {int(batched[0, 0])}
    early = decode(model, PROMPTS, generator=row_generators(seeds), stop_ids=stops, **kwargs)
    for b in range(len(PROMPTS)):
        assert S.cut_at_stop(early[b].tolist(), stops) == S.cut_at_stop(batched[b].tolist(), stops)
    # and the draws are draws: other seeds give other outputs, one shared generator differs from LLaDA's none
    assert not torch.equal(batched, decode(model, PROMPTS, generator=row_generators([1, 2, 3]), **kwargs))


def test_per_row_noise_is_each_generators_own_stream():
    logits = torch.zeros(2, 3, 5)
    a, b = S.add_gumbel_noise(logits, 1.0, row_generators([7, 8])), S.add_gumbel_noise(logits, 1.0, row_generators([8]))
    assert torch.equal(a[1], b[0])  # row 1 drew from seed 8 exactly what seed 8 draws alone
    u = torch.rand((3, 5), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(a[0], 1.0 / (-torch.log(u)))  # exp(0) / (-log u)^1
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        decode(tiny_model(), PROMPTS, steps=8, gen_length=16, block_length=8, temperature=1.0,
                   generator=row_generators([1, 2]))


# --- decoding options: Fast-dLLM's threshold, LLaDA's random remasking and EOS/EOT options ---


def reference_generate(model, prompt, steps, gen_length, block_length, threshold=0.0, remasking="low_confidence",
                       logits_eos_inf=False, confidence_eos_eot_inf=False, eot_id=None, generator=None, cache="none"):
    """The published algorithms, one prompt at a time, written from their descriptions: LLaDA's generate.py
    (schedule, remasking, logits_eos_inf, confidence_eos_eot_inf), Fast-dLLM's generate(threshold=...)
    (every masked token of the block at least `threshold` confident, and the most confident one, until
    the block is full) and its generate_with_prefix_cache / generate_with_dual_cache (the block's first
    step runs the whole sequence and keeps every layer's keys and values; later steps run the block and
    everything after it against the cached prefix, or the block alone against the cached prefix and
    suffix), with the Dream shift kept exact (the token before the block runs too). Random remasking
    draws one uniform per position of the block from `generator` (LLaDA draws one for every position of
    the sequence and keeps the block's, from torch's global stream). Returns (generated ids, forward
    passes)."""
    x = torch.tensor(prompt + [MASK] * gen_length)
    n_blocks, nfe, lead = gen_length // block_length, 0, int(model.cfg.shift_logits)
    for block in range(n_blocks):
        lo, hi = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
        schedule = S.num_transfer_tokens((x[None, lo:hi] == MASK).sum(1), steps // n_blocks)[0]
        i, kept = 0, None
        while (x[lo:hi] == MASK).any() if threshold else i < steps // n_blocks:
            if cache == "none" or i == 0:
                logits, kept = by_hand(model, x, torch.arange(len(x)))
                logits = logits[lo:hi]
            else:  # the cached keys: before the run slice, and (dual) after it
                end = len(x) if cache == "prefix" else hi
                cached = [(k[:, :, :lo - lead], v[:, :, :lo - lead]) if cache == "prefix" else
                          (torch.cat([k[:, :, :lo - lead], k[:, :, hi:]], 2), torch.cat([v[:, :, :lo - lead], v[:, :, hi:]], 2))
                          for k, v in kept]
                logits = by_hand(model, x[lo - lead:end], torch.arange(lo - lead, end), cached)[0][lead:lead + hi - lo]
            nfe += 1
            logits = logits.clone()
            if logits_eos_inf:
                logits[:, model.cfg.eos_token_id] = -float("inf")
            x0 = logits.argmax(-1)
            if confidence_eos_eot_inf:
                logits[:, eot_id] = -float("inf")
            p = torch.softmax(logits.to(torch.float64 if threshold else torch.float32), -1).gather(-1, x0[:, None])[:, 0]
            if remasking == "random":
                p = torch.rand(hi - lo, generator=generator)
            masked = x[lo:hi] == MASK
            confidence = torch.where(masked, p, -float("inf"))
            order = sorted(range(hi - lo), key=lambda j: -confidence[j])  # ties: the earlier position
            if threshold:
                chosen = [order[0]] + [j for j in order[1:int(masked.sum())] if confidence[j] >= threshold]
            else:
                chosen = order[:int(schedule[i])]
            for j in chosen:
                x[lo + j] = x0[j]
            i += 1
    return x[len(prompt):], nfe


def by_hand(model, ids, positions, cached=None):
    """The model's layers spelt out for one sequence: (logits of every token, each layer's rotated (k, v)),
    the tokens at `positions`, each layer attending first to its `cached` (k, v), then to these tokens."""
    h = model.embed(ids[None])
    cos, sin = (t[positions] for t in M.rope_cos_sin(model.cfg, int(positions.max()) + 1, h.device))
    kept = []
    for i, layer in enumerate(model.blocks):
        a, xn = layer.attn, layer.attn_norm(h)
        q, k, v = (proj(xn).view(1, len(ids), -1, a.head_dim).transpose(1, 2) for proj in (a.q_proj, a.k_proj, a.v_proj))
        q, k = M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)
        kept.append((k, v))
        if cached is not None:
            k, v = torch.cat([cached[i][0], k], 2), torch.cat([cached[i][1], v], 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=a.n_kv_heads != a.n_heads)
        h = h + a.o_proj(y.transpose(1, 2).reshape(1, len(ids), -1))
        h = h + layer.mlp(layer.mlp_norm(h))
    hidden = model.norm(h)[0]
    head = torch.cat([hidden[:1], hidden[:-1]]) if model.cfg.shift_logits else hidden
    return model.lm_head(head), kept


OPTIONS = [dict(threshold=0.9), dict(threshold=0.3), dict(threshold=1.0), dict(remasking="random"),
           dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True, eot_id=None),
           dict(threshold=0.5, logits_eos_inf=True, remasking="random"),
           dict(cache="prefix"), dict(cache="dual"), dict(cache="dual", threshold=0.9),
           dict(cache="prefix", threshold=0.3, remasking="random")]


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_decoding_options_equal_the_reference_batched_and_one_by_one(layout, options):
    model = tiny_model(layout)
    kwargs = dict(steps=8, gen_length=16, block_length=4)
    seeds = [5, 6, 7]
    default = decode(model, PROMPTS, **kwargs)
    if "eot_id" in options:  # a token the default run commits whose suppression changes the outputs
        eot = next(int(t) for t in default.flatten().unique()
                   if not torch.equal(default, decode(model, PROMPTS, **kwargs, confidence_eos_eot_inf=True,
                                                          eot_id=int(t))))
        options = dict(options, eot_id=eot)
    stats = {}
    batched = decode(model, PROMPTS, generator=row_generators(seeds), stats=stats, **kwargs, **options)
    for b, p in enumerate(PROMPTS):
        ref, nfe = reference_generate(model, p, **kwargs, generator=torch.Generator().manual_seed(seeds[b]), **options)
        assert torch.equal(batched[b], ref), (b, batched[b].tolist(), ref.tolist())
        assert stats["nfe"][b] == nfe
    if options.get("logits_eos_inf"):
        assert not (batched == model.cfg.eos_token_id).any()
    if "cache" in options:  # the cache ran fewer tokens through the model (its outputs may equal the exact ones)
        assert tokens_run(model, **kwargs, **options) < tokens_run(model, **kwargs, **dict(options, cache="none"))
    elif not options.get("logits_eos_inf") or (default == model.cfg.eos_token_id).any():
        assert not torch.equal(batched, default)  # the option changed something, so the equality says something


def tokens_run(model, **kwargs):
    """How many token positions the sampler ran through the model's embedding on PROMPTS."""
    seen = []
    hook = model.embed.register_forward_hook(lambda module, args, out: seen.append(args[0].numel()))
    try:
        decode(model, PROMPTS, generator=row_generators([5, 6, 7]), **kwargs)
    finally:
        hook.remove()
    return sum(seen)


def test_threshold_commits_what_is_sure_and_at_least_one():
    conf = torch.tensor([[0.95, 0.2, -math.inf, 0.91], [0.3, 0.1, 0.2, -math.inf], [-math.inf] * 4])
    assert S.threshold_commit(conf, 0.9).tolist() == [[True, False, False, True], [True, False, False, False],
                                                      [False] * 4]
    model = tiny_model()
    few, many = {}, {}
    decode(model, PROMPTS, steps=16, gen_length=16, block_length=4, threshold=0.01, stats=few)
    decode(model, PROMPTS, steps=16, gen_length=16, block_length=4, stats=many)
    assert many["nfe"] == [16, 16, 16] and all(n < 16 for n in few["nfe"])  # a low threshold: fewer steps
    with pytest.raises(ValueError, match="--remasking='high' is not one of"):
        decode(model, PROMPTS, steps=8, gen_length=16, block_length=8, remasking="high")
    with pytest.raises(ValueError, match="--confidence_eos_eot_inf needs the end-of-turn token"):
        decode(model, PROMPTS, steps=8, gen_length=16, block_length=8, confidence_eos_eot_inf=True)


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_the_cache_works_with_the_early_stop_and_temperature(layout, cache):
    model = tiny_model(layout)
    kwargs = dict(steps=8, gen_length=16, block_length=4, temperature=1.0, cache=cache, threshold=0.5)
    full = decode(model, PROMPTS, generator=row_generators([1, 2, 3]), **kwargs)
    stops = {int(full[0, 0])}
    early = decode(model, PROMPTS, generator=row_generators([1, 2, 3]), stop_ids=stops, **kwargs)
    for b in range(len(PROMPTS)):
        assert S.cut_at_stop(early[b].tolist(), stops) == S.cut_at_stop(full[b].tolist(), stops)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        decode(model, PROMPTS, steps=8, gen_length=16, block_length=8, cache=cache, cfg_scale=1.0)
    with pytest.raises(ValueError, match="--cache='kv' is not one of"):
        decode(model, PROMPTS, steps=8, gen_length=16, block_length=8, cache="kv")


def test_the_threshold_compares_float64_confidences_as_fast_dllm():
    # at threshold 1.0 a confidence of 1 - 2e-9 rounded to 1.0 in float32 and was committed; Fast-dLLM's
    # get_transfer_index takes the softmax in float64 and commits only the block's most confident token
    logits = torch.full((1, 2, 8), -30.0)
    logits[0, 0, 3], logits[0, 1, 5] = 0.0, 10.0  # both far more confident than 1 - 1e-8
    logits[0, 0, 4] = -20.0  # position 0's runner-up: confidence 1 - 2e-9, 1.0 in float32
    masked = torch.ones(1, 2, dtype=torch.bool)
    assert torch.softmax(logits[0, 0].float(), -1)[3] == 1.0 and torch.softmax(logits[0, 0].double(), -1)[3] < 1
    _, confidence = S.draw(logits.clone(), masked, S.Decoding(threshold=1.0), None, eos_id=0)
    assert S.threshold_commit(confidence, 1.0).tolist() == [[False, True]]  # the top one only
    _, confidence = S.draw(logits.clone(), masked, S.Decoding(), None, eos_id=0)
    assert confidence.dtype == torch.float32  # the default sampler: LLaDA's float32, unchanged


def test_generation_builds_no_autograd_graph():
    # generate lost its no_grad decorator to a function put between the two: evaluation then kept every
    # forward's activations for a backward that never comes
    model = tiny_model()
    grad_seen = []
    decode(model, PROMPTS, steps=4, gen_length=8, block_length=8,
               on_step=lambda canvas: grad_seen.append(torch.is_grad_enabled()))
    assert grad_seen and not any(grad_seen)
