r"""
The DLLM-JEPA objective ("DLLM-JEPA: Joint Embedding Predictive Architectures for Masked Diffusion
Language Models", arXiv:2606.00091, §3.2 and A.10), top to bottom:

  x0 --mask at t_L--> context view --online f_theta (grad)--> logits -> L_diff          (eq. 2)
                                                          \-> pool -> z_tL -> predictor g -> z_hat
  x0 --mask at t_H--> target view  --EMA f_theta' (no grad)--> pool -> z_tH
  L_JEPA = 1 - cos(sg(z_tH), z_hat)                                                      (eq. 6)
  L      = L_diff + lambda * L_JEPA                                                      (eq. 7)
  after every optimizer step: theta' <- tau * theta' + (1 - tau) * theta

One gradient-carrying backbone forward (context view) and one no-grad forward (target view): 4F per step
against the diffusion baseline's 3F (Table 1). lambda = 0 is the baseline: no target view, no EMA forward.
"""

import copy
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from lora import lora_layers
from model import Block, init_weights, rope_cos_sin

# the paper's defaults (aggressive setting, §4.1, A.10)
T_LOW = 0.2  # context view masking rate t_L
T_HIGH = 0.7  # target view masking rate t_H
JEPA_WEIGHT = 1.0  # lambda; 0 = diffusion-only baseline
PREDICTOR_LAYERS = 3  # k; 0 = identity (no-predictor ablation)
EMA_DECAY = 0.996  # tau
ANCHOR_L2 = 1e-4  # lambda_L2 of the L2-to-base anchor ablation (§4.3), used only when switched on

# -----------------------------------------------------------------------------
# views: the forward process q(x_t | x_0, t) of eq. 1


def mask_view(input_ids, maskable, t, mask_token_id, noise):
    """Replace each maskable token by [MASK] independently with probability t (eq. 1): position i is masked
    when noise[i] < t, noise uniform on [0, 1). Prompt tokens are never maskable; the response and its EOS
    padding are (LLaDA's SFT convention). Returns (noisy ids, bool mask of the masked positions)."""
    masked = maskable & (noise.to(input_ids.device) < t)
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), masked


class ViewNoise(NamedTuple):
    """The uniforms on [0, 1) that decide the two views of a batch (mask_view masks where noise < t)."""
    context: torch.Tensor  # (B, T): the context view's
    target: torch.Tensor  # (B, T): the target view's
    rate: torch.Tensor  # (B, 1): a per-sequence draw u; the random context rate is 1 - u (see objective)


def draw_view_noise(batch_shape, generator=None):
    """Fresh ViewNoise for a (B, T) batch from a generator (tests, bench)."""
    B, T = batch_shape
    return ViewNoise(torch.rand(B, T, generator=generator), torch.rand(B, T, generator=generator),
                     torch.rand(B, 1, generator=generator))


def epoch_stream(seed, epoch):
    """The noise stream of one training epoch: each epoch draws new views of every example."""
    return seed * 1000 + epoch


def view_noise(example_ids, length, stream, max_len):
    """ViewNoise for the examples, a pure function of (stream, example id): an example gets the same views
    whatever batch, rank, padding length or resume point it lands in, so a 2-process run reproduces a
    1-process run and a resumed run needs no generator state. stream: epoch_stream(seed, epoch) in
    training; a probe uses its own."""
    context, target, rate = [], [], []
    for i in example_ids:
        g = torch.Generator().manual_seed(stream * 1_000_003 + int(i))
        both = torch.rand(2, max_len, generator=g)[:, :length]
        context.append(both[0]), target.append(both[1]), rate.append(torch.rand(1, generator=g))
    return ViewNoise(torch.stack(context), torch.stack(target), torch.stack(rate))


# -----------------------------------------------------------------------------
# losses


def sequence_losses(masked_logits, masked_targets, masked):
    """Cross-entropy at the masked positions averaged within each sequence: (B,) losses (0 for a sequence
    with none masked) and (B,) bool, which sequences have any. masked_logits (N, V) are the logits at
    masked.nonzero() in row-major order (what model(..., logits_at=masked) returns); masked_targets (N,)
    the clean tokens there."""
    token_loss = F.cross_entropy(masked_logits.float(), masked_targets, reduction="none")
    rows = masked.nonzero()[:, 0]
    per_row_sum = torch.zeros(masked.shape[0], device=token_loss.device).index_add_(0, rows, token_loss)
    per_row_count = masked.sum(dim=1)
    return per_row_sum / per_row_count.clamp(min=1), per_row_count > 0


def diffusion_loss(masked_logits, masked_targets, masked):
    """Eq. 2: cross-entropy over the masked positions, averaged over the masked positions of each sequence,
    then over the sequences that have any. A row with no masked position contributes nothing; a batch
    with none gives 0, never NaN."""
    per_sequence, has_masked = sequence_losses(masked_logits, masked_targets, masked)
    if not has_masked.any():
        return per_sequence.sum() * 0.0  # keeps the graph (and FSDP's gradient hooks) intact
    return per_sequence[has_masked].mean()


def jepa_loss(predicted, target):
    """Eq. 6: 1 - cos(sg(z_tH), z_hat), averaged over the batch. Returns (loss, mean cosine)."""
    cosine = F.cosine_similarity(predicted.float(), target.detach().float(), dim=-1)
    return 1.0 - cosine.mean(), cosine.mean()


# -----------------------------------------------------------------------------
# pooling and predictor


def pool(hidden, keep):
    """Mean of the last hidden state over kept positions (non-masked, non-padding), then LayerNorm.
    The LayerNorm has no affine parameters: the same function must run on the online and the EMA side,
    and an online-only scale would be a free parameter the target never sees (the predictor can learn any
    rescaling it needs). Computed in float32."""
    keep = keep.to(hidden.dtype).unsqueeze(-1)
    mean = (hidden * keep).float().sum(dim=1) / keep.float().sum(dim=1).clamp(min=1.0)
    return F.layer_norm(mean, mean.shape[-1:])


class Predictor(nn.Module):
    """g_phi: k transformer layers of the backbone's own block type and width, randomly initialised,
    applied to the pooled vector as a sequence of length one (A.10). k = 0 is the identity."""

    def __init__(self, cfg, n_layers):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(n_layers)])
        init_weights(self)

    def forward(self, z):
        if len(self.blocks) == 0:
            return z
        x = z[:, None, :].to(self.blocks[0].attn_norm.weight.dtype)
        cos, sin = rope_cos_sin(self.cfg, 1, z.device)  # position 0: the rotation is the identity
        for block in self.blocks:
            x = block(x, cos, sin)
        return x[:, 0].clone()  # not a view: FSDP2 hooks the output of a sharded module


def derange(target_embedding):
    """The shuffled-target control's targets: row i gets row i - 1's (row 0 the last row's), a fixed
    derangement of the batch, so no example keeps its own target. A batch of one cannot be deranged."""
    if target_embedding.shape[0] < 2:
        raise ValueError("the shuffled-target control needs at least 2 examples in every micro-batch")
    return target_embedding.roll(1, dims=0)


# -----------------------------------------------------------------------------
# EMA target and L2-to-base anchor; both work on plain and on FSDP-sharded (DTensor) parameters


def local_tensors(params):
    """The local shard of each parameter (FSDP2 DTensor) or the tensor itself: updates stay local,
    with no communication, because the online and target copies are sharded the same way."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in params]


def make_target_encoder(model):
    """The EMA target f_theta'. Full fine-tuning: a frozen copy of the backbone (requires_grad False, eval
    mode); make it before FSDP sharding and shard it the same way. LoRA: an AdapterEMATarget over the online
    model itself; make it after sharding and loading."""
    if getattr(model, "lora", None):
        return AdapterEMATarget(model)
    target = copy.deepcopy(model)
    target.requires_grad_(False)
    return target.eval()


class AdapterEMATarget:
    """The EMA target with LoRA: the online model's frozen base weights plus an EMA of its adapters. It is
    the same function as a full EMA of base + adapters (the base never moves), for the memory of the
    adapters instead of a second copy of the model. A call runs the online model with the EMA adapters
    swapped in through adapter_override (the parameters are not touched, so the context view's autograd
    graph stays valid)."""

    def __init__(self, online):
        self.online = online
        self.layers = lora_layers(online)
        self.ema = [t.detach().clone() for layer in self.layers for t in (layer.lora_a, layer.lora_b)]

    def parameters(self):
        return iter(self.ema)

    def online_parameters(self):
        return (t for layer in self.layers for t in (layer.lora_a, layer.lora_b))

    def __call__(self, input_ids, **kwargs):
        # FSDP: the EMA adapters are sharded like the online ones; gather them (a few MB) outside any hook
        full = [t.full_tensor() if isinstance(t, DTensor) else t for t in self.ema]
        for i, layer in enumerate(self.layers):
            layer.adapter_override = (full[2 * i], full[2 * i + 1])
        try:
            with torch.no_grad():
                return self.online(input_ids, **kwargs)
        finally:
            for layer in self.layers:
                layer.adapter_override = None
    # no reshard(): the online model's root parameters are needed again by the coming backward


@torch.no_grad()
def ema_update(target, online, decay=EMA_DECAY):
    """theta' <- tau * theta' + (1 - tau) * theta, after every optimizer step (lerp: theta' += (1-tau)(theta - theta'))."""
    sources = target.online_parameters() if isinstance(target, AdapterEMATarget) else online.parameters()
    torch._foreach_lerp_(local_tensors(target.parameters()), local_tensors(sources), 1.0 - decay)


def snapshot_parameters(model):
    """A frozen copy of the base weights for the L2 anchor (local shards under FSDP)."""
    return [t.detach().clone() for t in local_tensors(model.parameters())]


@torch.no_grad()
def add_anchor_gradient(model, base_params, anchor_l2=ANCHOR_L2):
    """Gradient-side injection of the penalty lambda_L2 * ||theta - theta_base||^2 (§4.3):
    grad += 2 * lambda_L2 * (theta - theta_base). Call once per optimizer step, after backward."""
    params = [p for p in model.parameters()]
    grads = local_tensors([p.grad for p in params])
    torch._foreach_add_(grads, torch._foreach_sub(local_tensors(params), base_params), alpha=2.0 * anchor_l2)


# -----------------------------------------------------------------------------
# the objective


class StepResult(NamedTuple):
    loss: torch.Tensor  # L_diff + lambda * L_JEPA, with graph
    diffusion_loss: torch.Tensor  # with graph
    jepa_loss: torch.Tensor  # with graph (a constant 0 when lambda = 0)
    stats: dict  # detached scalars a researcher watches (call .item() only when logging)


def objective(model, batch, mask_token_id, *, t_low=T_LOW, t_high=T_HIGH, jepa_weight=JEPA_WEIGHT,
              predictor=None, target_encoder=None, noise=None, generator=None, random_context_rate=False,
              shuffled_target=False):
    """One DLLM-JEPA loss on a batch: exactly one gradient-carrying forward of the online model on the
    context view, and, when jepa_weight > 0, one no-grad forward of the EMA target on the target view.
    batch: input_ids (B, T), maskable (B, T) bool, padding (B, T) bool (True after the response's first EOS).
    noise: the views' ViewNoise (view_noise), else drawn from `generator` on the CPU.
    Symmetric views (the ablation) are t_high == t_low: two independent draws at the same rate.
    random_context_rate: each sequence's context rate is drawn from U(0, 1] instead of the fixed t_low, as
    in LLaDA's own objective (eq. 2's expectation over t). Not the paper's setting (fixed t_L); the tiny
    preset, trained from scratch, needs it to learn to generate from a fully masked canvas.
    shuffled_target: the shuffled-target control (not the method): each example is paired with another
    example's target embedding (derange), so the JEPA term keeps its size and gradient path but predicts
    nothing about its own input."""
    input_ids, maskable, padding = batch["input_ids"], batch["maskable"], batch["padding"]
    if noise is None:
        noise = draw_view_noise(input_ids.shape, generator)
    if random_context_rate:
        t_low = (1.0 - noise.rate).to(input_ids.device)  # (B, 1), in (0, 1]
    context_view, context_masked = mask_view(input_ids, maskable, t_low, mask_token_id, noise.context)
    out = model(context_view, logits_at=context_masked)
    l_diff = diffusion_loss(out.logits, input_ids[context_masked], context_masked)

    n_maskable = maskable.sum().clamp(min=1)
    stats = {"diffusion_loss": l_diff.detach(), "context_mask_frac": context_masked.sum() / n_maskable}
    if jepa_weight == 0:  # the diffusion baseline: no target view, no EMA forward, no predictor
        zero = l_diff.new_zeros(())
        return StepResult(l_diff, l_diff, zero, stats)

    target_view, target_masked = mask_view(input_ids, maskable, t_high, mask_token_id, noise.target)
    context_embedding = pool(out.hidden, ~context_masked & ~padding)
    with torch.no_grad():
        # no logits needed: an all-False logits_at skips the LM head (the call still goes through forward,
        # so FSDP's hooks gather and free the target's parameters as usual)
        nothing = torch.zeros_like(target_masked)
        target_hidden = target_encoder(target_view, logits_at=nothing).hidden
        target_embedding = pool(target_hidden, ~target_masked & ~padding)
        if shuffled_target:
            target_embedding = derange(target_embedding)
    if isinstance(target_encoder, FSDPModule):  # FSDP2: free the gathered parameters after a no-grad forward
        target_encoder.reshard()
    predicted_embedding = predictor(context_embedding)
    l_jepa, cosine = jepa_loss(predicted_embedding, target_embedding)

    stats.update({
        "jepa_loss": l_jepa.detach(), "cosine": cosine.detach(),
        "target_mask_frac": target_masked.sum() / n_maskable,
        # per-dimension std over the (local) batch: a fall towards 0 is the early warning of collapse (A.7)
        "context_embedding_std": context_embedding.detach().std(dim=0, correction=0).mean(),
        "target_embedding_std": target_embedding.std(dim=0, correction=0).mean(),
    })
    return StepResult(l_diff + jepa_weight * l_jepa, l_diff, l_jepa, stats)
