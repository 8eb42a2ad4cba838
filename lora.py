"""
LoRA: low-rank adapters, an opt-in for one GPU (the paper fine-tunes every weight). No new dependency.
W x + (alpha / r) B A x on the chosen linear layers of model.py's Transformer; the base stays frozen.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import InputError, MismatchedInput, read_json_object


LORA_TARGETS = {"q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj", "o": "attn.o_proj",
                "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update: y = x W^T + b + (alpha / r) drop(x) A^T B^T.
    B starts at zero, so the adapted model starts as the base model. The layer takes over the base layer's
    weight and bias (same names); the adapters are lora_a (r, in) and lora_b (out, r), float32 whatever the
    base's dtype (one GPU holds the frozen base in bf16). adapter_override = (A', B') runs the layer with
    other adapters (the EMA target's) without touching the parameters; dropout is off then."""

    def __init__(self, base, rank, alpha, dropout):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_a, a=5 ** 0.5)  # as nn.Linear (and PEFT) initialise A
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)
        self.adapter_override = None

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.adapter_override is None:
            a, b, h = self.lora_a, self.lora_b, self.lora_dropout(x)
        else:
            (a, b), h = self.adapter_override, x
        return y + self.scale * F.linear(F.linear(h, a.to(x.dtype)), b.to(x.dtype))


def add_lora(model, rank, alpha=16.0, dropout=0.05, targets=tuple(LORA_TARGETS)):
    """Replace the target linear layers of every block by LoRALinear (sharing their weight and bias) and
    freeze everything but the adapters. Records the settings in model.lora for saving."""
    unknown = set(targets) - set(LORA_TARGETS)
    if rank < 1 or unknown:
        raise ValueError(f"LoRA needs rank >= 1 and targets among {list(LORA_TARGETS)}; got {rank}, {sorted(unknown)}")
    model.requires_grad_(False)
    for block in model.blocks:
        for t in targets:
            parent_name, name = LORA_TARGETS[t].split(".")
            parent = getattr(block, parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    model.lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets)}
    return model


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(state_dict, lora):
    """A plain state dict: W + (alpha / r) B A for every adapted weight, adapter keys dropped."""
    out = {k: v for k, v in state_dict.items() if not k.endswith((".lora_a", ".lora_b"))}
    scale = lora["alpha"] / lora["rank"]
    for key in state_dict:
        if key.endswith(".lora_a"):
            prefix = key[: -len(".lora_a")]
            w = state_dict[prefix + ".weight"]
            delta = state_dict[prefix + ".lora_b"].float() @ state_dict[key].float()
            out[prefix + ".weight"] = (w.float() + scale * delta).to(w.dtype)
    return out


def save_adapters(state_dict, lora, out_dir):
    """Adapter-only checkpoint: adapter.safetensors (our parameter names) and adapter_config.json."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    adapters = {k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k.endswith((".lora_a", ".lora_b"))}
    save_file(adapters, os.path.join(out_dir, "adapter.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(lora, f, indent=2)


def load_adapters(model, adapter_dir):
    """Add LoRA layers as adapter_config.json describes (unless present) and load adapter.safetensors."""
    from safetensors.torch import load_file
    path = os.path.join(adapter_dir, "adapter_config.json")
    lora = read_json_object(path, "adapter config")
    missing = [k for k in ("rank", "alpha", "dropout", "targets") if k not in lora]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)} (train.py writes all four)")
    if not getattr(model, "lora", None):
        add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    tensors = load_file(os.path.join(adapter_dir, "adapter.safetensors"))
    expected = {k for k in model.state_dict() if k.endswith((".lora_a", ".lora_b"))}
    if set(tensors) != expected:
        raise MismatchedInput(f"adapter file does not match the model: missing {sorted(expected - set(tensors))[:5]}, "
                       f"unexpected {sorted(set(tensors) - expected)[:5]}")
    model.load_state_dict(tensors, strict=False)
    return model
