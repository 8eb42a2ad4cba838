"""model.py against an independent implementation (transformers' Llama and Qwen2 run bidirectionally),
checkpoint round trips, and bidirectionality. Tiny random configs, CPU, float32."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M

transformers = pytest.importorskip("transformers")

VOCAB = 96

# HF Llama/Qwen2 key fragments -> LLaDA's (REFERENCE.md §2); written out here independently of model.py
LLAMA_TO_LLADA = [
    ("model.embed_tokens.", "model.transformer.wte."), ("model.norm.", "model.transformer.ln_f."),
    ("lm_head.", "model.transformer.ff_out."), ("model.layers.", "model.transformer.blocks."),
    ("self_attn.q_proj.", "q_proj."), ("self_attn.k_proj.", "k_proj."), ("self_attn.v_proj.", "v_proj."),
    ("self_attn.o_proj.", "attn_out."), ("input_layernorm.", "attn_norm."), ("post_attention_layernorm.", "ff_norm."),
    ("mlp.gate_proj.", "ff_proj."), ("mlp.up_proj.", "up_proj."), ("mlp.down_proj.", "ff_out."),
]


def reference_model(layout, seed=0):
    """A tiny transformers model with random weights: Llama for the LLaDA layout, Qwen2 for Dream."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=False)
    if layout == "llada":
        cfg = transformers.LlamaConfig(num_key_value_heads=4, rms_norm_eps=1e-5, attention_bias=False,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **common)
        ref = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(num_key_value_heads=2, rms_norm_eps=1e-6,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
        ref = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or skipped one shows
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return ref.eval()


def write_release_checkpoint(ref, layout, path, n_shards=2):
    """Write ref's weights the way the release does: its key names, its config.json, sharded + index."""
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    if layout == "llada":
        renamed = {}
        for k, v in state.items():
            for old, new in LLAMA_TO_LLADA:
                k = k.replace(old, new)
            renamed[k] = v
        state = renamed
        c = ref.config
        rc = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.hidden_size,
              "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
              "mlp_hidden_size": c.intermediate_size, "vocab_size": VOCAB, "embedding_size": VOCAB,
              "rms_norm_eps": c.rms_norm_eps, "rope_theta": 500000.0, "max_sequence_length": 128,
              "mask_token_id": VOCAB - 1, "eos_token_id": 0, "pad_token_id": 0, "weight_tying": False,
              "include_bias": False, "block_type": "llama", "rope": True}
    else:  # Dream keeps the Qwen2 names
        c = ref.config
        rc = {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": c.hidden_size,
              "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
              "num_key_value_heads": c.num_key_value_heads, "intermediate_size": c.intermediate_size,
              "vocab_size": VOCAB, "rms_norm_eps": c.rms_norm_eps, "rope_theta": 1e6,
              "max_position_embeddings": 128, "mask_token_id": VOCAB - 1, "eos_token_id": 0, "pad_token_id": 0,
              "bos_token_id": 0, "tie_word_embeddings": False}
    os.makedirs(path, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        shard = {k: state[k].contiguous() for k in keys[i::n_shards]}
        save_file(shard, os.path.join(path, fname))
        weight_map.update({k: fname for k in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(rc, f)
    return state


def reference_logits(ref, ids, padding_mask=None):
    """Run the causal reference bidirectionally: in transformers 5 a 4D float mask replaces the causal one;
    all zeros attends everywhere, a large negative value hides padding keys."""
    B, T = ids.shape
    mask = torch.zeros(B, 1, T, T)
    if padding_mask is not None:
        mask = mask.masked_fill(~padding_mask[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        return ref(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_logits_match_transformers_reference(layout, tmp_path):
    ref = reference_model(layout)
    write_release_checkpoint(ref, layout, tmp_path / "ckpt")
    ours = M.from_pretrained(str(tmp_path / "ckpt")).eval()
    assert ours.cfg.arch == layout and ours.cfg.shift_logits == (layout == "dream")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 17))
    expected = reference_logits(ref, ids)
    if layout == "dream":  # Dream's shift on our side equals shifting the reference's logits
        expected = torch.cat([expected[:, :1], expected[:, :-1]], dim=1)
    with torch.no_grad():
        got = ours(ids).logits
    assert (got - expected).abs().max().item() < 1e-4

    # with right padding: rows of different lengths, padding keys hidden on both sides
    lengths = torch.tensor([17, 11, 5])
    padding_mask = torch.arange(17)[None, :] < lengths[:, None]
    expected = reference_logits(ref, ids, padding_mask)
    if layout == "dream":
        expected = torch.cat([expected[:, :1], expected[:, :-1]], dim=1)
    with torch.no_grad():
        got = ours(ids, padding_mask=padding_mask).logits
    assert (got - expected).abs().max().item() < 1e-4
    # and a padded row equals the same row run alone without its padding
    with torch.no_grad():
        alone = ours(ids[1:2, :11]).logits
    assert (got[1, :11] - alone[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_logits_at_and_hidden_states(layout, tmp_path):
    ref = reference_model(layout)
    write_release_checkpoint(ref, layout, tmp_path / "ckpt")
    ours = M.from_pretrained(str(tmp_path / "ckpt")).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    at = torch.rand(2, 9) < 0.3
    at[0, 0] = at[1, 8] = True
    with torch.no_grad():
        full = ours(ids, output_hidden_states=True)
        part = ours(ids, logits_at=at)
    assert part.logits.shape == (int(at.sum()), VOCAB)
    assert torch.allclose(part.logits, full.logits[at], atol=1e-6)
    # HF convention: n_layers+1 states, [0] the embeddings, the last after the final norm; same as HF's
    with torch.no_grad():
        hf = ref(input_ids=ids, attention_mask=torch.zeros(2, 1, 9, 9), output_hidden_states=True).hidden_states
    assert len(full.hidden_states) == len(hf) == ours.cfg.n_layers + 1
    for a, b in zip(full.hidden_states, hf):
        assert (a - b).abs().max().item() < 1e-4
    assert torch.equal(full.hidden_states[-1], full.hidden)


def test_bidirectional():
    torch.manual_seed(0)
    model = M.Transformer(M.PRESETS["tiny"]).eval()
    ids = torch.randint(3, 512, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 512
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert (a[0, 0] - b[0, 0]).abs().max().item() > 1e-6


def test_activation_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    model = M.Transformer(M.PRESETS["tiny"])
    ids = torch.randint(3, 512, (2, 16))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ckpt
        loss = model(ids).logits.float().logsumexp(-1).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-6)


def tiny_tokenizer(path, vocab_size):
    """A word-level tokenizer wrapped as PreTrainedTokenizerFast, saved to path (no mask_token declared,
    like LLaDA's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab_size - 1)}, "<|mdm_mask|>": vocab_size - 1}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    tok.save_pretrained(path)


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_save_then_load_is_bit_identical(layout, tmp_path):
    ref = reference_model(layout)
    source = write_release_checkpoint(ref, layout, tmp_path / "src")
    tiny_tokenizer(tmp_path / "src", VOCAB)
    ours = M.from_pretrained(str(tmp_path / "src"))
    tok = M.load_tokenizer(str(tmp_path / "src"))
    assert tok.mask_token_id == VOCAB - 1 and tok.pad_token_id == 0
    ours.save_pretrained(str(tmp_path / "out"), tokenizer=tok, shard_bytes=20_000)  # forces several shards
    assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
    # the files use the release's own key names, with the release's tensors bit for bit
    with open(tmp_path / "out" / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    assert set(weight_map) == set(source)
    written = {}
    for fname in set(weight_map.values()):
        written.update(load_file(tmp_path / "out" / fname))
    assert all(torch.equal(written[k], source[k]) for k in source)
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f)["model_type"].lower() == layout
    back = M.from_pretrained(str(tmp_path / "out"))
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert M.load_tokenizer(str(tmp_path / "out")).mask_token_id == VOCAB - 1


def test_a_tied_gqa_llada_layout_loads_as_illada_is_described(tmp_path):
    # iLLaDA-8B's layout: LLaDA's keys with weight_tying (the head is wte, no ff_out), grouped-query
    # attention, and a mask id the config does not name (5, its tokenizer's <|mdm_mask|>); model.py refused it
    from tokenizers import Tokenizer, models, pre_tokenizers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, attention_bias=False, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    ref = transformers.LlamaForCausalLM(cfg).eval()
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    state = write_release_checkpoint(ref, "llada", tmp_path / "src", n_shards=1)
    state.pop("model.transformer.ff_out.weight")  # the release stores the tied head once, as wte
    os.remove(tmp_path / "src" / "model.safetensors.index.json")
    for f in (tmp_path / "src").glob("*.safetensors"):
        os.remove(f)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "src" / "model.safetensors"))
    rc = json.load(open(tmp_path / "src" / "config.json"))
    rc["weight_tying"] = True
    del rc["mask_token_id"]
    json.dump(rc, open(tmp_path / "src" / "config.json", "w"))
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, VOCAB)}, "<|mdm_mask|>": 5}
    vocab.pop("w5")
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|mdm_mask|>"]})
    tok.save_pretrained(str(tmp_path / "src"))

    ours = M.from_pretrained(str(tmp_path / "src")).eval()
    assert ours.cfg.tie_embeddings and ours.cfg.mask_token_id == 5 and ours.cfg.n_kv_heads == 2
    assert ours.lm_head.weight is ours.embed.weight  # one parameter, as trained
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert (ours(ids).logits - reference_logits(ref, ids)).abs().max().item() < 1e-4
    assert M.load_tokenizer(str(tmp_path / "src")).mask_token_id == 5
    ours.save_pretrained(str(tmp_path / "out"), tokenizer=M.load_tokenizer(str(tmp_path / "src")))
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert set(written) == set(state) and all(torch.equal(written[k], state[k]) for k in state)
    assert json.load(open(tmp_path / "out" / "config.json"))["weight_tying"] is True
    back = M.from_pretrained(str(tmp_path / "out"))
    assert back.lm_head.weight is back.embed.weight and back.cfg.mask_token_id == 5


def test_saved_dream_has_every_file_its_loader_reads(tmp_path):
    # Dream's from_pretrained reads generation_config.json: copied from the release when it has one,
    # written from the model's special tokens when it has none
    ref = reference_model("dream")
    write_release_checkpoint(ref, "dream", tmp_path / "src")
    tiny_tokenizer(tmp_path / "src", VOCAB)
    (tmp_path / "src" / "modeling_dream.py").write_text("# the release's remote code\n")
    ours = M.from_pretrained(str(tmp_path / "src"))
    ours.save_pretrained(str(tmp_path / "out"), tokenizer=M.load_tokenizer(str(tmp_path / "src")))
    files = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "generation_config.json", "model.safetensors", "modeling_dream.py",
            "tokenizer.json", "tokenizer_config.json"} <= files
    generation = json.load(open(tmp_path / "out" / "generation_config.json"))
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["mask_token_id"]) == (0, 0, VOCAB - 1)
    (tmp_path / "src" / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "max_new_tokens": 7}))
    ours.save_pretrained(str(tmp_path / "again"))
    assert json.load(open(tmp_path / "again" / "generation_config.json")) == {"eos_token_id": 0, "max_new_tokens": 7}


def test_saved_llada_config_names_no_token_outside_the_vocabulary(tmp_path):
    # LLaDA's own config.json has no bos_token_id; a tiny LLaDA-layout model must not get LLaDA-8B's 126080
    ref = reference_model("llada")
    write_release_checkpoint(ref, "llada", tmp_path / "src")
    ours = M.from_pretrained(str(tmp_path / "src"))
    assert ours.cfg.bos_token_id is None
    M.Transformer(ours.cfg).save_pretrained(str(tmp_path / "fresh"))  # no source config: release_config
    config = json.load(open(tmp_path / "fresh" / "config.json"))
    ids = {k: v for k, v in config.items() if k.endswith("token_id")}
    assert "bos_token_id" not in ids and all(0 <= v < VOCAB for v in ids.values())
    assert "bos_token_id" not in M.release_config(M.PRESETS["llada-8b"], torch.bfloat16)


def test_preset_model_saves_in_release_layout_and_loads(tmp_path):
    torch.manual_seed(0)
    model = M.Transformer(M.PRESETS["tiny"])
    model.save_pretrained(str(tmp_path / "tiny"))
    assert os.path.exists(tmp_path / "tiny" / "model.safetensors")
    keys = load_file(tmp_path / "tiny" / "model.safetensors").keys()
    assert "model.transformer.blocks.0.ff_proj.weight" in keys and "model.transformer.ff_out.weight" in keys
    back = M.from_pretrained(str(tmp_path / "tiny"))
    assert back.cfg == model.cfg
    ids = torch.randint(3, 512, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


@pytest.mark.parametrize("fault", ["missing", "extra"])
def test_missing_or_extra_key_is_named(fault, tmp_path):
    ref = reference_model("llada")
    write_release_checkpoint(ref, "llada", tmp_path / "ckpt", n_shards=1)
    path = tmp_path / "ckpt" / "model-00001-of-00001.safetensors"
    state = load_file(path)
    if fault == "missing":
        del state["model.transformer.blocks.1.up_proj.weight"]
        name = "model.transformer.blocks.1.up_proj.weight"
    else:
        state["model.transformer.blocks.1.extra.weight"] = torch.zeros(2)
        name = "model.transformer.blocks.1.extra.weight"
    save_file(state, path)
    with open(tmp_path / "ckpt" / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {k: path.name for k in state}}, f)
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        M.from_pretrained(str(tmp_path / "ckpt"))


def test_unknown_architecture_and_missing_dir(tmp_path):
    (tmp_path / "bad").mkdir()
    with open(tmp_path / "bad" / "config.json", "w") as f:
        json.dump({"model_type": "gpt2"}, f)
    with pytest.raises(ValueError, match="gpt2"):
        M.from_pretrained(str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        M.from_pretrained(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("config,message", [
    ('{"model_type": "llada", ', r"config.json:1: malformed JSON"),
    ('["llada"]', "expected a JSON object"),
    ('{"model_type": "llada", "d_model": 8}', "config.json: missing or malformed setting 'n_heads'"),
])
def test_a_bad_config_json_is_named(tmp_path, config, message):
    from harness.errors import InputError
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(config)
    with pytest.raises(InputError, match=message):
        M.from_pretrained(str(tmp_path / "ckpt"))


def test_a_checkpoint_without_tokenizer_files_is_named(tmp_path):
    from harness.errors import MissingInput
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(tmp_path / "ckpt"))  # no tokenizer given
    with pytest.raises(MissingInput, match="has no tokenizer files"):
        M.load_tokenizer(str(tmp_path / "ckpt"))


def checkpoint_with_tokenizer_code(path, marker):
    """A tiny checkpoint whose tokenizer is a class shipped beside it (as Dream's tokenization_dream.py is),
    with a modeling .py beside it too (as the releases' remote code); importing the tokenizer's file leaves
    `marker` on disk."""
    from conftest import tiny_tokenizer
    torch.manual_seed(0)
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(path), tokenizer=tiny_tokenizer())
    (path / "tokenization_shipped.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass ShippedTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n")
    (path / "modeling_shipped.py").write_text("raise SystemExit('the model code never runs here')\n")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="ShippedTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_shipped.ShippedTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return str(path)


def test_code_shipped_beside_a_checkpoint_runs_only_on_request(tmp_path):
    # the tokenizer was loaded with trust_remote_code=True: a .py named by tokenizer_config.json's auto_map ran
    # under every script, and train.py copied it into final/, where it ran again
    from conftest import run_script

    from harness.errors import InputError
    marker = tmp_path / "ran"
    ckpt = checkpoint_with_tokenizer_code(tmp_path / "ckpt", marker)
    with pytest.raises(InputError, match="tokenization_shipped.py.*--trust_remote_code=true"):
        M.load_tokenizer(ckpt)
    proc = run_script(["evaluate.py", f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=1",
                       f"--out_dir={tmp_path / 'ev'}"], check=False)
    assert proc.returncode == 2 and "--trust_remote_code=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert type(M.load_tokenizer(ckpt, trust_remote_code=True)).__name__ == "ShippedTokenizer" and marker.exists()
    # a checkpoint written from it carries the model's code (for the release's own loader), not the tokenizer's
    M.save_checkpoint(M.Transformer(M.PRESETS["tiny"]).state_dict(), M.PRESETS["tiny"], str(tmp_path / "out"),
                      source_dir=ckpt)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.py")) == ["modeling_shipped.py"]


def test_presets_match_reference_numbers():
    llada, dream = M.PRESETS["llada-8b"], M.PRESETS["dream-7b"]
    assert (llada.n_layers, llada.d_model, llada.n_heads, llada.n_kv_heads, llada.mlp_hidden, llada.vocab_size) == \
        (32, 4096, 32, 32, 12288, 126464)
    assert (llada.mask_token_id, llada.eos_token_id, llada.rope_theta, llada.qkv_bias) == (126336, 126081, 5e5, False)
    assert (dream.n_layers, dream.d_model, dream.n_heads, dream.n_kv_heads, dream.mlp_hidden, dream.vocab_size) == \
        (28, 3584, 28, 4, 18944, 152064)
    assert (dream.mask_token_id, dream.eos_token_id, dream.rope_theta, dream.qkv_bias, dream.shift_logits) == \
        (151666, 151643, 1e6, True, True)
    with torch.device("meta"):
        n = M.Transformer(llada).num_params()
    assert 8.0e9 < n < 8.1e9  # 16.0 GB in bf16
