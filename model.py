"""
The bidirectional transformer behind LLaDA-8B and Dream-7B, in one file.

A native PyTorch implementation (not transformers' remote code): it reads the releases' safetensors by
key mapping, the way nanoGPT loads GPT-2, so FSDP wrapping, activation checkpointing, hidden states and
pooled embeddings are plain PyTorch and work with any transformers version.

Both releases are the same network up to names and two switches (their config.json and modeling code on
the hub: GSAI-ML/LLaDA-8B-Base's modeling_llada.py, Dream-org/Dream-v0-Base-7B's modeling_dream.py):
  embedding -> N x [RMSNorm -> bidirectional GQA attention with RoPE -> residual,
                    RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> untied LM head
  LLaDA: no biases, MHA.            Dream (Qwen2.5 layout): q/k/v bias, GQA, logits shifted by one.
"""

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from harness import run_folder
from release.layout import generation_config, release_config, release_key
from harness.errors import InputError, MismatchedInput, MissingInput, RunError, read_json_object
from lora import merge_lora

# -----------------------------------------------------------------------------
# configuration


@dataclass
class ModelConfig:
    arch: str = "llada"  # release layout: 'llada' or 'dream' (key names, config.json, logit shift)
    vocab_size: int = 126464
    n_layers: int = 32
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int = 32
    mlp_hidden: int = 12288
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    qkv_bias: bool = False
    max_seq_len: int = 4096
    mask_token_id: int = 126336
    eos_token_id: int = 126081  # EOS = PAD in both releases
    # LLaDA's config.json names no BOS (its tokenizer's <|startoftext|> is 126080); None = not in the config
    bos_token_id: Optional[int] = None
    shift_logits: bool = False  # Dream predicts token i from position i-1 (Dream's modeling_dream.py)
    # the LM head is the embedding matrix (LLaDA's config.json "weight_tying", as iLLaDA-8B's model card says):
    # one parameter, stored once (the release keeps only wte)
    tie_embeddings: bool = False

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @property
    def pad_token_id(self):
        return self.eos_token_id


PRESETS = {
    "llada-8b": ModelConfig(),
    "dream-7b": ModelConfig(
        arch="dream", vocab_size=152064, n_layers=28, d_model=3584, n_heads=28, n_kv_heads=4,
        mlp_hidden=18944, norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, max_seq_len=131072,
        mask_token_id=151666, eos_token_id=151643, bos_token_id=151643, shift_logits=True),
    # ~1.8M parameters, for CPU work. LLaDA layout; small GQA (6 heads, 2 KV heads) so the tiny model
    # exercises the same code paths as Dream. Special token ids are those of the tiny tokenizer that
    # data.py trains: 0 = <|endoftext|> (EOS = PAD), 1 = <|mdm_mask|>, 2 = <|startoftext|>.
    "tiny": ModelConfig(
        arch="llada", vocab_size=512, n_layers=4, d_model=192, n_heads=6, n_kv_heads=2, mlp_hidden=512,
        norm_eps=1e-5, rope_theta=10000.0, qkv_bias=False, max_seq_len=512,
        mask_token_id=1, eos_token_id=0, bos_token_id=2, shift_logits=False),
    # ~9M parameters: the small-scale replication's pretrained base (LLaDA layout, the tiny preset's special
    # ids, a byte-level BPE of 8,192 tokens trained on the replication corpus; see replication/corpus.py)
    "small": ModelConfig(
        arch="llada", vocab_size=8192, n_layers=6, d_model=256, n_heads=8, n_kv_heads=8, mlp_hidden=704,
        norm_eps=1e-5, rope_theta=10000.0, qkv_bias=False, max_seq_len=512,
        mask_token_id=1, eos_token_id=0, bos_token_id=2, shift_logits=False),
}

# LLaDA 1.5 shares LLaDA-8B's layout; iLLaDA-8B is LLaDA's layout with tied embeddings, grouped-query
# attention and mask id 5 (read from its config.json and tokenizer, not assumed: no preset here)
HUB_IDS = ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5",
           "GSAI-ML/iLLaDA-8B-Base", "GSAI-ML/iLLaDA-8B-Instruct",
           "Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B")

# -----------------------------------------------------------------------------
# the network


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32, as both releases do, then scale in the input dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(cfg, seq_len, device):
    """cos/sin tables of shape (seq_len, head_dim), always float32 (LLaDA's rope_full_precision)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32)
                                         / cfg.head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # half-split rotation (HF Llama's rotate_half): (x1, x2) -> (-x2, x1) over the two halves
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, attn_mask, cached=None, kept=None):
        """cached: (k, v) of other positions, already rotated, attended to before this call's own keys
        (the sampler's KV cache); kept: a list that receives this call's own (k, v)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kept is not None:
            kept.append((k, v))
        if cached is not None:
            k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
        # bidirectional: no causal mask; attn_mask (B,1,1,S) only hides padding (and uncached) keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One transformer layer. The unit of FSDP sharding and of activation checkpointing."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask=None, cached=None, kept=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask, cached, kept)
        return x + self.mlp(self.mlp_norm(x))


def init_weights(root):
    """normal(0, 0.02) matrices and embeddings, zero biases, unit norms (LLaDA's init_std 0.02)."""
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class Output(NamedTuple):
    logits: torch.Tensor  # (B, T, V), or (N, V) when logits_at selects N positions
    hidden: torch.Tensor  # (B, T, D): final hidden state after the final norm (the LM head's input)
    hidden_states: Optional[tuple]  # n_layers+1 tensors (HF convention: [0] embeddings, last = hidden)
    kv: Optional[list] = None  # with return_kv: per layer, this call's (k, v), rotated, (B, H_kv, T, head_dim)


class KVCache(NamedTuple):
    """Keys and values of positions a forward does not recompute (the sampler's approximate cache, as in
    Fast-dLLM): per layer (k, v), rotated at their own positions, (B, H_kv, S, head_dim), and which of the
    S keys each row may attend to (B, S) bool."""
    layers: list
    visible: torch.Tensor


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie()
        self.activation_checkpointing = False  # run each block under torch.utils.checkpoint
        self.source_config = None  # the source checkpoint's config.json, written back by save_pretrained
        self.source_dir = None
        self.lora = None  # LoRA settings once add_lora has run
        init_weights(self)

    def tie(self):
        """With tie_embeddings the LM head's weight is the embedding's, one Parameter (its gradient the sum
        of both uses). Called again after loading, which assigns each name a tensor of its own."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, padding_mask=None, logits_at=None, output_hidden_states=False, positions=None,
                cache=None, return_kv=False):
        """
        input_ids: (B, T) token ids.
        padding_mask: optional (B, T) bool, True at real tokens; padding keys are hidden from attention.
            LLaDA's SFT uses none (EOS padding is attended to and trained), so the default is None.
        logits_at: optional (B, T) bool; logits only at those positions, as (N, V), so a caller that
            needs the masked 20% does not pay for the whole LM head. With shift_logits (Dream) the logits
            for position i come from hidden state i-1 (position 0 from itself), so logits[..., i, :]
            always scores token i whatever the release.
        Inference with a KV cache (sampler.py's fast paths; training never passes these):
        positions: optional (B, T) long, each token's position (default 0..T-1), for a slice of a sequence.
        cache: optional KVCache of other positions of the same sequences, attended to before these tokens.
        return_kv: also return each layer's (k, v) of these tokens (Output.kv), to build a cache.
        """
        B, T = input_ids.shape
        x = self.embed(input_ids)
        if positions is None:
            cos, sin = rope_cos_sin(self.cfg, T, input_ids.device)
        else:  # per row: (B, 1, T, head_dim), broadcast over the heads
            cos, sin = (t[positions][:, None] for t in rope_cos_sin(self.cfg, int(positions.max()) + 1,
                                                                      input_ids.device))
        attn_mask = None if padding_mask is None else padding_mask[:, None, None, :].to(torch.bool)
        if cache is not None:
            mine = padding_mask if padding_mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
            attn_mask = torch.cat([cache.visible, mine.to(torch.bool)], dim=1)[:, None, None, :]
        kept = [] if return_kv else None
        all_hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, attn_mask, use_reentrant=False)
            elif cache is not None or kept is not None:
                x = block(x, cos, sin, attn_mask, cache.layers[i] if cache is not None else None, kept)
            else:
                x = block(x, cos, sin, attn_mask)
            if output_hidden_states:
                all_hidden.append(x)
        hidden = self.norm(x)
        if output_hidden_states:
            all_hidden[-1] = hidden  # HF convention: the last entry is after the final norm
        head_input = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1) if self.cfg.shift_logits else hidden
        if logits_at is not None:
            head_input = head_input[logits_at]
        logits = self.lm_head(head_input)
        return Output(logits, hidden, tuple(all_hidden) if output_hidden_states else None, kept)

    def save_pretrained(self, out_dir, tokenizer=None, shard_bytes=5 * 2**30):
        """Write safetensors in the source release's own key names, its config.json and the tokenizer,
        so the directory loads back here and in the release's original code. LoRA adapters are merged."""
        state = merge_lora(self.state_dict(), self.lora) if self.lora else self.state_dict()
        save_checkpoint(state, self.cfg, out_dir, tokenizer=tokenizer,
                        source_config=self.source_config, source_dir=self.source_dir,
                        shard_bytes=shard_bytes)


# -----------------------------------------------------------------------------
# release checkpoints: config.json read, loading and saving (the releases' key names: release/layout.py)

def config_from_release(rc, where="config.json"):
    """Recognise the architecture from a release's config.json (a dict) and return a ModelConfig. A key that
    is missing or of the wrong type is an InputError naming `where` (the file's path; a LLaDA-layout config
    without mask_token_id takes the <|mdm_mask|> id of the tokenizer.json beside it: iLLaDA's is 5, LLaDA's
    126336, which is also the default where neither says)."""
    folder = os.path.dirname(where)
    try:
        return _config_from_release(rc, folder if os.path.isdir(folder or ".") and folder else None)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise InputError(f"{where}: {e}") from None
        raise InputError(f"{where}: missing or malformed setting {e}") from None


def mask_id_of_tokenizer(folder):
    """The id of <|mdm_mask|> among the added tokens of <folder>/tokenizer.json, else None."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return None
    added = read_json_object(path, "tokenizer.json").get("added_tokens") or []
    return next((t.get("id") for t in added if isinstance(t, dict) and t.get("content") == "<|mdm_mask|>"), None)


def llada_mask_id(rc, tokenizer_dir):
    """config.json's mask_token_id, else the tokenizer's <|mdm_mask|>, else LLaDA-8B's 126336."""
    for found in (rc.get("mask_token_id"), mask_id_of_tokenizer(tokenizer_dir) if tokenizer_dir else None):
        if found is not None:
            return found
    return 126336


def _config_from_release(rc, tokenizer_dir=None):
    model_type = str(rc.get("model_type", "")).lower()
    if model_type == "llada":
        if rc.get("include_bias") or rc.get("include_qkv_bias"):
            raise InputError("LLaDA config with biases is not a released architecture")
        n_heads = rc["n_heads"]
        return ModelConfig(
            arch="llada", vocab_size=rc.get("embedding_size") or rc["vocab_size"], n_layers=rc["n_layers"],
            d_model=rc["d_model"], n_heads=n_heads, n_kv_heads=rc.get("n_kv_heads") or n_heads,
            mlp_hidden=rc.get("mlp_hidden_size") or rc.get("mlp_ratio", 4) * rc["d_model"],
            norm_eps=rc.get("rms_norm_eps", 1e-5), rope_theta=rc.get("rope_theta", 10000.0), qkv_bias=False,
            max_seq_len=rc.get("max_sequence_length", 4096),
            mask_token_id=llada_mask_id(rc, tokenizer_dir),
            eos_token_id=rc.get("eos_token_id", 126081), bos_token_id=rc.get("bos_token_id"),
            shift_logits=False, tie_embeddings=bool(rc.get("weight_tying")))
    if model_type == "dream":
        if rc.get("tie_word_embeddings"):
            raise InputError("Dream config with tie_word_embeddings is not the released architecture")
        n_heads = rc["num_attention_heads"]
        return ModelConfig(
            arch="dream", vocab_size=rc["vocab_size"], n_layers=rc["num_hidden_layers"],
            d_model=rc["hidden_size"], n_heads=n_heads, n_kv_heads=rc.get("num_key_value_heads") or n_heads,
            mlp_hidden=rc["intermediate_size"], norm_eps=rc.get("rms_norm_eps", 1e-6),
            rope_theta=rc.get("rope_theta", 1e6), qkv_bias=True,
            max_seq_len=rc.get("max_position_embeddings", 131072), mask_token_id=rc.get("mask_token_id", 151666),
            eos_token_id=rc.get("eos_token_id", 151643), bos_token_id=rc.get("bos_token_id", 151643),
            shift_logits=True)
    raise InputError(f"unrecognised architecture: config.json has model_type={rc.get('model_type')!r}; "
                     "expected 'llada' (LLaDA-8B) or 'Dream' (Dream-7B)")


def resolve_checkpoint_dir(name_or_path):
    """A checkpoint directory as is; a train.py output directory means its final/ model; otherwise a hub
    id, downloaded (weights, configs, tokenizer, remote code)."""
    if os.path.isdir(name_or_path):
        return run_folder.checkpoint_of(name_or_path)
    if os.path.exists(name_or_path):
        raise InputError(f"{name_or_path} is a file; expected a checkpoint directory or a hub id")
    if name_or_path.startswith((".", "/")) or name_or_path.count("/") != 1:
        raise MissingInput(f"no checkpoint directory {name_or_path!r} (and it is not a hub id like "
                                f"{HUB_IDS[0]})")
    from huggingface_hub import snapshot_download
    return snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.py", "*.txt",
                                                           "*.model", "*.tiktoken"])


def checkpoint_files(ckpt_dir):
    """{release key: safetensors file} from the index file, or from the single model.safetensors."""
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(ckpt_dir, v) for k, v in weight_map.items()}
    files = sorted(glob.glob(os.path.join(ckpt_dir, "*.safetensors")))
    if not files:
        raise MissingInput(f"no safetensors weights in {ckpt_dir}")
    from safetensors import safe_open
    out = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            out.update({k: path for k in f.keys()})
    return out


def weights_digest(ckpt_dir):
    """A short sha256 of the checkpoint's weight files, byte for byte: what an evaluation's records were made
    from. Reading every byte costs a few seconds a GiB, once a run; a sampled hash would pass a checkpoint
    edited between its samples as unchanged."""
    h = hashlib.sha256()
    for path in sorted(set(checkpoint_files(ckpt_dir).values())):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_release_config(ckpt_dir):
    path = os.path.join(ckpt_dir, "config.json")
    if not os.path.exists(path):
        raise MissingInput(f"{ckpt_dir} has no config.json")
    return read_json_object(path, "config.json")


def load_release_tensors(ckpt_dir, cfg, dtype, device="cpu"):
    """{our name: tensor} for every parameter, read lazily file by file from the release checkpoint (one
    tensor in host memory at a time besides the result). Missing or unexpected keys are an error."""
    from safetensors import safe_open
    files = checkpoint_files(ckpt_dir)
    wanted = {release_key(n, cfg.arch): n for n in param_names(cfg)}
    missing = sorted(set(wanted) - set(files))
    unexpected = sorted(set(files) - set(wanted))
    if missing or unexpected:
        raise MismatchedInput(f"checkpoint {ckpt_dir} does not match the {cfg.arch} architecture: "
                              f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                              f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    out = {}
    by_file = {}
    for key, name in wanted.items():
        by_file.setdefault(files[key], []).append((key, name))
    for path, entries in by_file.items():
        with safe_open(path, framework="pt", device=str(device)) as f:
            for key, name in entries:
                out[name] = f.get_tensor(key).to(dtype)
    return out


def param_names(cfg):
    """The state-dict names a release stores for a Transformer with this config, without building it (a
    tied LM head is the embedding, stored once)."""
    with torch.device("meta"):
        names = list(Transformer(cfg).state_dict().keys())
    return [n for n in names if not (cfg.tie_embeddings and n == "lm_head.weight")]


def from_pretrained(name_or_path, dtype=torch.float32, device="cpu"):
    """Load a LLaDA or Dream release (local directory or hub id) or a directory written by save_pretrained.
    The model is built on the meta device and filled tensor by tensor, so host memory holds one copy."""
    ckpt_dir = resolve_checkpoint_dir(name_or_path)
    rc = read_release_config(ckpt_dir)
    cfg = config_from_release(rc, os.path.join(ckpt_dir, "config.json"))
    with torch.device("meta"):
        model = Transformer(cfg)
    state = load_release_tensors(ckpt_dir, cfg, dtype, device)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie()
    model.source_config, model.source_dir = rc, ckpt_dir
    return model


def non_finite_parameters(model):
    """The names of the parameters holding a NaN or an inf (a diverged run's weights), in order."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


def load_for_inference(name_or_path, dtype=torch.float32, device="cpu"):
    """The model of a checkpoint in eval mode, as evaluate.py, probe.py, sample.py and bench.py use it. A
    diverged run's non-finite weights are refused here, once for every script: they would score and sample
    NaNs without a word."""
    model = from_pretrained(name_or_path, dtype=dtype, device=device).eval()
    bad = non_finite_parameters(model)
    if bad:
        raise RunError(f"{name_or_path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): a diverged "
                       f"run, which cannot be evaluated; use an earlier snapshot or train again with a lower --lr")
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_code(ckpt_dir):
    """The .py files a checkpoint's tokenizer_config.json names in its auto_map (a tokenizer class shipped
    beside the weights, as Dream's tokenization_dream.py): code that AutoTokenizer runs when trusted."""
    path = os.path.join(ckpt_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return []
    auto_map = read_json_object(path, "tokenizer_config.json").get("auto_map") or {}
    names = [n for v in auto_map.values() for n in (v if isinstance(v, list) else [v]) if isinstance(n, str)]
    return sorted({n.split("--")[-1].rsplit(".", 1)[0] + ".py" for n in names})


def load_tokenizer(name_or_path, cfg=None, trust_remote_code=False):
    """The release's tokenizer through transformers.AutoTokenizer, with the mask token set explicitly
    (LLaDA's tokenizer does not declare one) and pad = EOS. A tokenizer class shipped as code beside the
    checkpoint (Dream's) runs only with trust_remote_code: a .py in a downloaded or shared folder is a
    program; the model itself never runs remote code."""
    from transformers import AutoTokenizer
    ckpt_dir = resolve_checkpoint_dir(name_or_path)
    cfg = cfg or config_from_release(read_release_config(ckpt_dir), os.path.join(ckpt_dir, "config.json"))
    if not any(os.path.exists(os.path.join(ckpt_dir, f)) for f in TOKENIZER_FILES):
        raise MissingInput(f"{ckpt_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy them from the "
                           f"release the weights came from")
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns that it knows no 'llada'
    try:
        tok = AutoTokenizer.from_pretrained(ckpt_dir, trust_remote_code=trust_remote_code)
    except ValueError as e:  # transformers refuses a tokenizer that exists only as shipped code
        if "trust_remote_code" not in str(e):
            raise
        raise InputError(f"{ckpt_dir}'s tokenizer is code shipped beside it "
                         f"({', '.join(tokenizer_code(ckpt_dir)) or 'see tokenizer_config.json'}), which runs only "
                         f"on request: read it, then pass --trust_remote_code=true (Dream's releases need this)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tok.mask_token = tok.convert_ids_to_tokens(cfg.mask_token_id)
    if tok.pad_token_id is None:
        tok.pad_token = tok.convert_ids_to_tokens(cfg.eos_token_id)
    if tok.mask_token_id != cfg.mask_token_id:
        raise InputError(f"tokenizer at {ckpt_dir} maps the mask token to {tok.mask_token_id}, "
                         f"config says {cfg.mask_token_id}")
    return tok


def save_checkpoint(state_dict, cfg, out_dir, tokenizer=None, source_config=None, source_dir=None,
                    shard_bytes=5 * 2**30):
    """Write a full (unsharded) state dict of our names as a release checkpoint: sharded safetensors with
    model.safetensors.index.json, config.json, the tokenizer, and the release's remote-code .py files
    when the model came from a release directory."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = {release_key(k, cfg.arch): v.detach().contiguous().cpu() for k, v in state_dict.items()
               if not (cfg.tie_embeddings and k == "lm_head.weight")}  # a tied head: stored once, as wte
    dtype = next(iter(tensors.values())).dtype
    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = tensors[key], size + nbytes
    shards.append(current)
    for old in glob.glob(os.path.join(out_dir, "model*.safetensors")):
        os.remove(old)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    index_path = os.path.join(out_dir, "model.safetensors.index.json")
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(index_path, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    elif os.path.exists(index_path):
        os.remove(index_path)
    rc = dict(source_config) if source_config else release_config(cfg, dtype)
    rc["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(rc, f, indent=2)
    if source_dir and os.path.abspath(source_dir) != os.path.abspath(out_dir):
        # the release's model code, untouched, so that the checkpoint loads in the release's own code too
        # (which runs it only when its user passes trust_remote_code=True there); never the tokenizer's code,
        # which this project's loaders would run: a trusted tokenizer writes its own file (save_pretrained)
        for py in set(glob.glob(os.path.join(source_dir, "*.py"))) - \
                {os.path.join(source_dir, f) for f in tokenizer_code(source_dir)}:
            shutil.copy(py, out_dir)
    source_generation = os.path.join(source_dir or "", "generation_config.json")
    if source_dir and os.path.exists(source_generation):
        if os.path.abspath(source_dir) != os.path.abspath(out_dir):
            shutil.copy(source_generation, out_dir)
    elif cfg.arch == "dream":  # Dream's loader reads it whether or not the model generates
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation_config(cfg), f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
