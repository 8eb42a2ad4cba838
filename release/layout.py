"""
The releases' own layouts, as data: the key names LLaDA's and Dream's safetensors use for each of model.py's
parameters (LLaDA's OLMo-derived names, Dream's Qwen2 names), and the config.json (and Dream's
generation_config.json) a release would carry for a model of a given shape. model.py reads and writes
checkpoints through these, so what it saves loads in the releases' own code too.
"""

import re

# our parameter name -> the release's; "{i}" is the block index
RELEASE_KEYS = {
    "llada": {
        "embed.weight": "model.transformer.wte.weight",
        "norm.weight": "model.transformer.ln_f.weight",
        "lm_head.weight": "model.transformer.ff_out.weight",
        "blocks.{i}.attn_norm.weight": "model.transformer.blocks.{i}.attn_norm.weight",
        "blocks.{i}.attn.q_proj.weight": "model.transformer.blocks.{i}.q_proj.weight",
        "blocks.{i}.attn.k_proj.weight": "model.transformer.blocks.{i}.k_proj.weight",
        "blocks.{i}.attn.v_proj.weight": "model.transformer.blocks.{i}.v_proj.weight",
        "blocks.{i}.attn.o_proj.weight": "model.transformer.blocks.{i}.attn_out.weight",
        "blocks.{i}.mlp_norm.weight": "model.transformer.blocks.{i}.ff_norm.weight",
        "blocks.{i}.mlp.gate_proj.weight": "model.transformer.blocks.{i}.ff_proj.weight",
        "blocks.{i}.mlp.up_proj.weight": "model.transformer.blocks.{i}.up_proj.weight",
        "blocks.{i}.mlp.down_proj.weight": "model.transformer.blocks.{i}.ff_out.weight",
    },
    "dream": {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
        "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
        "blocks.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
        "blocks.{i}.attn.q_proj.bias": "model.layers.{i}.self_attn.q_proj.bias",
        "blocks.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
        "blocks.{i}.attn.k_proj.bias": "model.layers.{i}.self_attn.k_proj.bias",
        "blocks.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
        "blocks.{i}.attn.v_proj.bias": "model.layers.{i}.self_attn.v_proj.bias",
        "blocks.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "blocks.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
        "blocks.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
        "blocks.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
    },
}


def release_key(name, arch):
    """Our parameter name -> the release's key name."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    template = f"blocks.{{i}}.{m.group(2)}" if m else name
    if template not in RELEASE_KEYS[arch]:
        raise KeyError(f"parameter {name!r} has no {arch} release name")
    return RELEASE_KEYS[arch][template].format(i=m.group(1) if m else "")


def release_config(cfg, dtype):
    """A config.json in the release's own format for a model that did not come from a release."""
    if cfg.arch == "llada":
        # the fields of GSAI-ML/LLaDA-8B-Base's config.json, with our dimensions
        return {
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                         "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                         "AutoModel": "modeling_llada.LLaDAModelLM"},
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": cfg.d_model,
            "embedding_dropout": 0.0, "embedding_size": cfg.vocab_size, "eos_token_id": cfg.eos_token_id,
            **({"bos_token_id": cfg.bos_token_id} if cfg.bos_token_id is not None else {}),
            "flash_attention": False, "include_bias": False,
            "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
            "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "mask_token_id": cfg.mask_token_id, "max_sequence_length": cfg.max_seq_len,
            "mlp_hidden_size": cfg.mlp_hidden, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
            "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "n_layers": cfg.n_layers,
            "pad_token_id": cfg.pad_token_id, "precision": "amp_bf16", "residual_dropout": 0.0,
            "rms_norm_eps": cfg.norm_eps, "rope": True, "rope_full_precision": True, "rope_theta": cfg.rope_theta,
            "scale_logits": False, "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": False,
            "vocab_size": cfg.vocab_size, "weight_tying": cfg.tie_embeddings,
        }
    return {  # Dream: the Qwen2 fields of Dream-org/Dream-v0-Base-7B's config.json
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream", "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": cfg.d_model,
        "initializer_range": 0.02, "intermediate_size": cfg.mlp_hidden, "max_position_embeddings": cfg.max_seq_len,
        "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers, "num_key_value_heads": cfg.n_kv_heads,
        "rms_norm_eps": cfg.norm_eps, "rope_scaling": None, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": False,
        "use_sliding_window": False, "vocab_size": cfg.vocab_size, "mask_token_id": cfg.mask_token_id,
        "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
    }


def generation_config(cfg):
    """A generation_config.json with the model's special tokens, for a Dream model not from a release."""
    return {"_from_model_config": True, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, "mask_token_id": cfg.mask_token_id}
