"""Properties of the DLLM-JEPA objective in jepa.py."""

import math

import pytest
import torch
from conftest import dream_layout, make_batch, small_config

import jepa as J
import model as M

SMALL = small_config()
LAYOUTS = {"llada": SMALL, "dream": dream_layout(SMALL)}
MASK = SMALL.mask_token_id
EOS = SMALL.eos_token_id


def make_parts(layout="llada", k=2, seed=0):
    torch.manual_seed(seed)
    online = M.Transformer(LAYOUTS[layout])
    return online, J.make_target_encoder(online), J.Predictor(online.cfg, k)


@pytest.mark.parametrize("t", [0.1, 0.2, 0.7, 0.9])
def test_masking_rate_and_prompt_never_masked(t):
    B, T, P = 64, 256, 32
    ids = torch.randint(3, 64, (B, T))
    maskable = torch.zeros(B, T, dtype=torch.bool)
    maskable[:, P:] = True
    noise = torch.rand(B, T, generator=torch.Generator().manual_seed(1))
    noisy, masked = J.mask_view(ids, maskable, t, MASK, noise)
    n = int(maskable.sum())
    observed = masked.sum().item() / n
    assert abs(observed - t) < 5 * math.sqrt(t * (1 - t) / n)  # binomial, 5 sigma
    assert not masked[:, :P].any() and torch.equal(noisy[:, :P], ids[:, :P])
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), MASK))
    assert torch.equal(noisy[~masked], ids[~masked])


def test_view_noise_depends_only_on_stream_and_example():
    a = J.view_noise([5, 9], 30, stream=3, max_len=64)
    assert a.context.shape == a.target.shape == (2, 30) and a.rate.shape == (2, 1)  # one rate draw per example
    assert all((x >= 0).all() and (x < 1).all() for x in a)
    # the same example in another batch, at another position, with another padding length
    b = J.view_noise([9, 1, 5], 40, stream=3, max_len=64)
    for field in ("context", "target"):
        assert torch.equal(getattr(a, field)[0], getattr(b, field)[2, :30])
        assert torch.equal(getattr(a, field)[1], getattr(b, field)[0, :30])
    assert torch.equal(a.rate[0], b.rate[2])
    assert not torch.equal(a.context, a.target)  # context and target noise are independent
    assert torch.equal(a.context[0], J.view_noise([5], 30, stream=3, max_len=64).context[0])
    assert not torch.equal(J.view_noise([5], 30, stream=4, max_len=64).context[0], a.context[0])
    # the values of the earlier (3, B, T) layout: rows 0-1 from one rand(2, max_len), then the rate
    g = torch.Generator().manual_seed(3 * 1_000_003 + 9)
    both, rate = torch.rand(2, 64, generator=g), torch.rand(1, 1, generator=g)
    assert torch.equal(a.context[1], both[0, :30]) and torch.equal(a.target[1], both[1, :30]) and a.rate[1] == rate


def test_diffusion_loss_by_hand():
    V = 4
    masked = torch.tensor([[False, True, True, False], [False, False, False, False], [True, False, False, False]])
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])  # N = 3 rows
    targets = torch.tensor([0, 2, 3])

    def ce(row, t):
        return -(row[t] - math.log(sum(math.exp(x) for x in row)))

    row0 = (ce([2.0, 0, 0, 0], 0) + ce([0, 1.0, 0, 0], 2)) / 2
    row2 = ce([0, 0, 0, 3.0], 3)
    expected = (row0 + row2) / 2  # the row with no masked position is not counted
    got = J.diffusion_loss(logits, targets, masked)
    assert abs(got.item() - expected) < 1e-6
    # nothing masked anywhere: 0, not NaN, and still differentiable
    empty = torch.zeros(2, 4, dtype=torch.bool)
    z = J.diffusion_loss(torch.zeros(0, V, requires_grad=True), torch.zeros(0, dtype=torch.long), empty)
    assert z.item() == 0.0 and z.requires_grad


def test_pool_ignores_masked_and_padding_positions():
    torch.manual_seed(0)
    hidden = torch.randn(3, 10, 16)
    keep = torch.rand(3, 10) > 0.4
    keep[:, 0] = True
    z = J.pool(hidden, keep)
    changed = hidden.clone()
    changed[~keep] = torch.randn(int((~keep).sum()), 16) * 100
    assert torch.equal(J.pool(changed, keep), z)
    # it is LayerNorm(mean over kept positions)
    for b in range(3):
        mean = hidden[b, keep[b]].mean(0)
        assert torch.allclose(z[b], (mean - mean.mean()) / torch.sqrt(mean.var(unbiased=False) + 1e-5), atol=1e-5)


def test_jepa_loss_values():
    v = torch.randn(5, 32)
    loss, cos = J.jepa_loss(v, v.clone())
    assert abs(loss.item()) < 1e-6 and abs(cos.item() - 1) < 1e-6
    loss, cos = J.jepa_loss(v, -v)
    assert abs(loss.item() - 2.0) < 1e-6
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert abs(J.jepa_loss(a, b)[0].item() - 1.0) < 1e-6


def test_predictor_zero_layers_is_identity_and_k_layers_are_blocks():
    z = torch.randn(3, SMALL.d_model)
    assert J.Predictor(SMALL, 0)(z) is z
    p = J.Predictor(SMALL, 3)
    assert len(p.blocks) == 3 and all(isinstance(b, M.Block) for b in p.blocks)
    out = p(z)
    assert out.shape == z.shape and not torch.allclose(out, z)
    # rows are independent (a length-one sequence per row)
    assert torch.allclose(p(z[1:2])[0], out[1], atol=1e-6)


def grads_of(module):
    return [p.grad for p in module.parameters()]


def nonzero(grads):
    return any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_gradient_flow(layout):
    online, target, predictor = make_parts(layout)
    batch = make_batch()
    res = J.objective(online, batch, MASK, predictor=predictor, target_encoder=target,
                      generator=torch.Generator().manual_seed(0))
    # no gradient can reach the EMA copy
    assert all(not p.requires_grad for p in target.parameters())
    res.diffusion_loss.backward(retain_graph=True)
    assert nonzero(grads_of(online))
    assert not nonzero(grads_of(predictor))  # the predictor gets nothing from L_diff
    online.zero_grad()
    res.jepa_loss.backward()
    assert nonzero(grads_of(online)) and nonzero(grads_of(predictor))
    assert all(p.grad is None for p in target.parameters())


def test_total_is_diffusion_plus_lambda_jepa():
    online, target, predictor = make_parts()
    batch = make_batch()
    res = J.objective(online, batch, MASK, jepa_weight=2.0, predictor=predictor, target_encoder=target,
                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(res.loss, res.diffusion_loss + 2.0 * res.jepa_loss)
    assert abs(res.stats["cosine"].item() - (1 - res.jepa_loss.item())) < 1e-6


class CountingForward:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_pre_hook(self.hook)

    def hook(self, *_):
        self.calls += 1


def test_forward_counts_and_baseline_never_runs_target():
    online, target, predictor = make_parts()
    online_calls, target_calls, predictor_calls = CountingForward(online), CountingForward(target), \
        CountingForward(predictor)
    batch = make_batch()
    J.objective(online, batch, MASK, predictor=predictor, target_encoder=target)
    assert (online_calls.calls, target_calls.calls, predictor_calls.calls) == (1, 1, 1)
    res = J.objective(online, batch, MASK, jepa_weight=0.0, predictor=predictor, target_encoder=target)
    assert (online_calls.calls, target_calls.calls, predictor_calls.calls) == (2, 1, 1)
    assert res.jepa_loss.item() == 0.0 and torch.equal(res.loss, res.diffusion_loss)
    # the baseline needs neither a target nor a predictor
    J.objective(online, batch, MASK, jepa_weight=0.0)


def test_ema_update_matches_formula():
    online, target, _ = make_parts()
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    J.ema_update(target, online, decay=0.996)
    for t0, t1, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t1, 0.996 * t0 + 0.004 * o, atol=1e-6)


def test_anchor_gradient_equals_autograd_of_penalty():
    online, _, _ = make_parts()
    base = J.snapshot_parameters(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = make_batch()
    g = torch.Generator().manual_seed(3)
    # explicit penalty through autograd
    loss = J.objective(online, batch, MASK, jepa_weight=0.0, generator=g).loss
    penalty = sum(((p - b) ** 2).sum() for p, b in zip(online.parameters(), base))
    (loss + 1e-4 * penalty).backward()
    expected = [p.grad.clone() for p in online.parameters()]
    # gradient-side injection
    online.zero_grad()
    g = torch.Generator().manual_seed(3)
    J.objective(online, batch, MASK, jepa_weight=0.0, generator=g).loss.backward()
    J.add_anchor_gradient(online, base, 1e-4)
    for e, p in zip(expected, online.parameters()):
        assert torch.allclose(p.grad, e, atol=1e-6, rtol=1e-5)


def test_stats_recorded():
    online, target, predictor = make_parts()
    res = J.objective(online, make_batch(), MASK, predictor=predictor, target_encoder=target,
                      generator=torch.Generator().manual_seed(0))
    keys = {"diffusion_loss", "jepa_loss", "cosine", "context_mask_frac", "target_mask_frac",
            "context_embedding_std", "target_embedding_std"}
    assert keys <= set(res.stats)
    assert all(torch.isfinite(v) and not v.requires_grad for v in res.stats.values())
    assert res.stats["context_mask_frac"] < res.stats["target_mask_frac"]


def test_symmetric_views_are_independent_draws(monkeypatch):
    online, target, predictor = make_parts()
    masks = []
    real_mask_view = J.mask_view

    def spy(*args, **kwargs):
        out = real_mask_view(*args, **kwargs)
        masks.append(out[1])
        return out

    monkeypatch.setattr(J, "mask_view", spy)
    J.objective(online, make_batch(), MASK, t_low=0.2, t_high=0.2, predictor=predictor, target_encoder=target,
                generator=torch.Generator().manual_seed(0))
    assert len(masks) == 2 and not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("k", [0, 3])
def test_full_step_on_tiny_model(layout, k):
    online, target, predictor = make_parts(layout, k=k)
    params = list(online.parameters()) + list(predictor.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = make_batch()
    target_before = [p.clone() for p in target.parameters()]
    online_before = [p.clone() for p in online.parameters()]
    for _ in range(2):
        res = J.objective(online, batch, MASK, predictor=predictor, target_encoder=target, generator=g)
        assert torch.isfinite(res.loss)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        J.ema_update(target, online)
    assert any(not torch.equal(a, b) for a, b in zip(online_before, online.parameters()))
    # the target moved, but only by a (1 - tau) fraction of the online model's move
    moved_t = sum((a - b).abs().sum() for a, b in zip(target_before, target.parameters()))
    moved_o = sum((a - b).abs().sum() for a, b in zip(online_before, online.parameters()))
    assert 0 < moved_t < 0.02 * moved_o


def test_random_context_rate_varies_per_sequence(monkeypatch):
    online, target, predictor = make_parts()
    batch = make_batch(B=4, T=200, prompt_lengths=(2, 2, 2, 2), response_lengths=(190, 190, 190, 190))
    noise = J.draw_view_noise((4, 200), torch.Generator().manual_seed(0))
    noise = noise._replace(rate=torch.tensor([0.95, 0.7, 0.3, 0.05])[:, None])  # rates 1 - u: 0.05, 0.3, 0.7, 0.95
    seen = []
    real_mask_view = J.mask_view

    def spy(*args):
        out = real_mask_view(*args)
        seen.append(out[1])
        return out

    monkeypatch.setattr(J, "mask_view", spy)
    J.objective(online, batch, MASK, predictor=predictor, target_encoder=target, noise=noise, random_context_rate=True)
    rates = seen[0][:, 2:].float().mean(1)
    assert torch.allclose(rates, torch.tensor([0.05, 0.3, 0.7, 0.95]), atol=0.1)
    assert torch.allclose(seen[1][:, 2:].float().mean(1), torch.full((4,), 0.7), atol=0.1)  # target stays t_high


def test_derange_moves_every_row_and_refuses_a_batch_of_one():
    z = torch.arange(12.0).reshape(4, 3)
    shuffled = J.derange(z)
    assert torch.equal(shuffled, z[[3, 0, 1, 2]])  # row i gets row i - 1's
    assert not (shuffled == z).all(dim=1).any()  # no row keeps its own
    with pytest.raises(ValueError, match="at least 2 examples"):
        J.derange(z[:1])


def test_shuffled_target_control_pairs_each_prediction_with_another_examples_target(monkeypatch):
    """The control's JEPA loss is the cosine between each prediction and the previous example's target;
    the diffusion loss and the embeddings themselves are those of the method's step, and gradients reach
    the online model and the predictor as in the method."""
    online, target, predictor = make_parts()
    batch = make_batch()
    noise = J.draw_view_noise(batch["input_ids"].shape, torch.Generator().manual_seed(0))
    seen = []
    real_jepa_loss = J.jepa_loss
    monkeypatch.setattr(J, "jepa_loss", lambda p, t: seen.append((p.detach(), t.detach())) or real_jepa_loss(p, t))
    method = J.objective(online, batch, MASK, predictor=predictor, target_encoder=target, noise=noise)
    control = J.objective(online, batch, MASK, predictor=predictor, target_encoder=target, noise=noise,
                          shuffled_target=True)
    (pred_m, target_m), (pred_c, target_c) = seen
    assert torch.equal(pred_m, pred_c) and torch.equal(target_c, target_m.roll(1, dims=0))
    assert torch.equal(method.diffusion_loss, control.diffusion_loss)
    assert not torch.allclose(method.jepa_loss, control.jepa_loss)
    expected = 1 - torch.nn.functional.cosine_similarity(pred_m, target_m[[3, 0, 1, 2]], dim=-1).mean()
    assert torch.allclose(control.jepa_loss, expected, atol=1e-6)
    control.jepa_loss.backward()
    assert nonzero(grads_of(online)) and nonzero(grads_of(predictor))
