"""One-GPU mode: LoRA adapters, the adapter-EMA target, merge-and-save, adapter-only save/load, and a
2-process FSDP run with LoRA."""

import copy
import json
import os

import pytest
import torch
from conftest import dream_layout, make_batch, read_resume_state, run_script, small_config, tiny_tokenizer

import jepa as J
import lora as loralib
import model as M

SMALL = small_config()
LAYOUTS = {"llada": SMALL, "dream": dream_layout(SMALL)}


def lora_model(layout="llada", rank=4, targets=tuple(loralib.LORA_TARGETS)):
    torch.manual_seed(0)
    base = M.Transformer(LAYOUTS[layout]).eval()
    adapted = loralib.add_lora(copy.deepcopy(base), rank, alpha=8.0, dropout=0.0, targets=targets)
    return base, adapted


def perturb_adapters(model, scale=0.05):
    with torch.no_grad():
        for layer in loralib.lora_layers(model):
            layer.lora_b.add_(scale * torch.randn_like(layer.lora_b))


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_initial_lora_model_equals_base(layout):
    base, adapted = lora_model(layout)
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(base(ids).logits, adapted(ids).logits)  # B = 0 exactly
    assert len(loralib.lora_layers(adapted)) == 7 * SMALL.n_layers
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_a", ".lora_b")) for n in trainable)


def test_only_adapters_and_predictor_get_gradients():
    _, online = lora_model()
    online.train()
    perturb_adapters(online)
    target, predictor = J.make_target_encoder(online), J.Predictor(SMALL, 2)
    assert isinstance(target, J.AdapterEMATarget)
    res = J.objective(online, make_batch(), SMALL.mask_token_id, predictor=predictor, target_encoder=target,
                      generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    for name, p in online.named_parameters():
        if name.endswith((".lora_a", ".lora_b")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert all(p.grad is not None for p in predictor.parameters())
    assert all(not t.requires_grad for t in target.parameters())


def test_adapter_ema_target_equals_full_ema_of_base_and_adapters():
    _, online = lora_model()
    full_target = copy.deepcopy(online)  # a full EMA copy of base + adapters, as for full fine-tuning
    adapter_target = J.make_target_encoder(online)
    for _ in range(3):  # the online adapters move, both targets follow
        perturb_adapters(online, 0.1)
        with torch.no_grad():
            for layer in loralib.lora_layers(online):
                layer.lora_a.add_(0.1 * torch.randn_like(layer.lora_a))
        J.ema_update(adapter_target, online, 0.9)
        J.ema_update(full_target, online, 0.9)
    ids = torch.randint(3, 64, (2, 12))
    got = adapter_target(ids).logits
    # the full EMA, merged into plain weights, is the reference
    merged = M.Transformer(SMALL).eval()
    merged.load_state_dict(loralib.merge_lora(full_target.state_dict(), online.lora))
    with torch.no_grad():
        assert torch.allclose(got, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(got, online(ids).logits, atol=1e-3)  # and it is not the online model
    assert all(layer.adapter_override is None for layer in loralib.lora_layers(online))


def test_merge_and_save_then_load_reproduces_logits(tmp_path):
    _, adapted = lora_model("dream")
    perturb_adapters(adapted)
    adapted.save_pretrained(str(tmp_path / "merged"))
    back = M.from_pretrained(str(tmp_path / "merged")).eval()
    assert back.lora is None
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, adapted(ids).logits, atol=1e-5)


def test_adapter_only_save_and_load(tmp_path):
    base, adapted = lora_model(targets=("q", "v", "down"))
    perturb_adapters(adapted)
    loralib.save_adapters(adapted.state_dict(), adapted.lora, str(tmp_path / "adapter"))
    assert json.load(open(tmp_path / "adapter" / "adapter_config.json"))["targets"] == ["q", "v", "down"]
    fresh = loralib.load_adapters(copy.deepcopy(base), str(tmp_path / "adapter"))
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, adapted(ids).logits)
    other = loralib.add_lora(copy.deepcopy(base), 4, targets=("q",))
    with pytest.raises(KeyError, match="does not match"):
        loralib.load_adapters(other, str(tmp_path / "adapter"))
    # a damaged adapter_config.json is named (it was a raw JSONDecodeError / KeyError)
    from harness.errors import InputError
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text('{"rank": 4,\n "alpha": }')
    with pytest.raises(InputError, match=r"adapter_config.json:2: malformed JSON"):
        loralib.load_adapters(copy.deepcopy(base), str(tmp_path / "adapter"))
    config.write_text('{"rank": 4, "alpha": 16.0}')
    with pytest.raises(InputError, match=r"adapter_config.json: missing dropout, targets"):
        loralib.load_adapters(copy.deepcopy(base), str(tmp_path / "adapter"))


def test_bad_lora_settings():
    with pytest.raises(ValueError, match="targets among"):
        loralib.add_lora(M.Transformer(SMALL), 4, targets=("qq",))
    import importlib
    import train
    train = importlib.reload(train)
    with pytest.raises(train.ConfigError, match="unknown lora_targets"):
        train.configure(["--lora_rank=8", "--lora_targets=q,proj"])
    train = importlib.reload(train)
    with pytest.raises(train.ConfigError, match="anchor"):
        train.configure(["--lora_rank=8", "--anchor_l2=1e-4"])


def test_two_process_lora_fsdp_run(tmp_path):
    out = str(tmp_path / "lora")
    args = ["--preset", "tiny", "--lora_rank=4", "--log_every=1", "--batch_size=4", "--max_steps=3",
            "--activation_checkpointing=true", f"--out_dir={out}"]
    run_script(["train.py", *args, "--stop_step=2"], nproc=2, port=29641)
    saved = read_resume_state(out)["trainable"]  # the adapters and the predictor; the frozen base is not saved
    assert "online.blocks.0.attn.q_proj.lora_a" in saved and "predictor.blocks.0.attn.q_proj.weight" in saved
    assert not any(k.startswith("online.") and not k.endswith((".lora_a", ".lora_b")) for k in saved)
    run_script(["train.py", *args, "--resume"], nproc=2, port=29642)
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["diffusion_loss"] == r["diffusion_loss"] and r["jepa_loss"] >= 0 for r in log)
    from safetensors.torch import load_file
    base = load_file(os.path.join(out, "base", "model.safetensors"))
    final = load_file(os.path.join(out, "final", "model.safetensors"))
    adapters = load_file(os.path.join(out, "adapter", "adapter.safetensors"))
    assert set(final) == set(base)  # merged: a plain checkpoint in the release layout
    assert adapters and all(k.endswith((".lora_a", ".lora_b")) for k in adapters)
    changed = [k for k in base if not torch.equal(base[k], final[k])]
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "attn_out.weight",
                                       "ff_proj.weight", "up_proj.weight", "ff_out.weight")) for k in changed)
    assert torch.equal(base["model.transformer.wte.weight"], final["model.transformer.wte.weight"])


def test_one_process_bf16_holds_the_frozen_base_in_bf16(tmp_path):
    # the one-GPU mode's precision (here on the CPU): the base loads in bf16 and stays frozen there, the
    # adapters and the predictor train in fp32 under autocast; final/ is the bf16 merge, adapter/ is fp32
    from safetensors.torch import load_file
    torch.manual_seed(3)
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(tmp_path / "ckpt"),
                                                     tokenizer=tiny_tokenizer())
    common = ["train.py", "--preset", "tiny", f"--model={tmp_path / 'ckpt'}", "--lora_rank=4", "--lora_dropout=0",
              "--log_every=1", "--batch_size=4", "--max_steps=2"]
    run_script([*common, f"--out_dir={tmp_path / 'fp32'}"])
    run_script([*common, "--dtype=bfloat16", f"--out_dir={tmp_path / 'bf16'}"])
    logs = [[json.loads(line) for line in open(tmp_path / d / "log.jsonl")] for d in ("fp32", "bf16")]
    assert logs[1][0]["diffusion_loss"] != logs[0][0]["diffusion_loss"]  # bf16 really ran
    for step in range(2):
        assert logs[1][step]["diffusion_loss"] == pytest.approx(logs[0][step]["diffusion_loss"], rel=2e-3)
    final = load_file(str(tmp_path / "bf16" / "final" / "model.safetensors"))
    adapters = load_file(str(tmp_path / "bf16" / "adapter" / "adapter.safetensors"))
    assert {t.dtype for t in final.values()} == {torch.bfloat16}
    assert {t.dtype for t in adapters.values()} == {torch.float32}
    release = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    key, prefix = "model.transformer.blocks.0.q_proj.weight", "blocks.0.attn.q_proj"
    lora_a, lora_b = adapters[prefix + ".lora_a"], adapters[prefix + ".lora_b"]
    assert lora_b.abs().sum() > 0  # trained
    merged = (release[key].to(torch.bfloat16).float() + (16.0 / 4) * (lora_b @ lora_a)).to(torch.bfloat16)
    assert torch.equal(final[key], merged)  # W (in bf16) + (alpha / r) B A, rounded to bf16
    emb = "model.transformer.wte.weight"
    assert torch.equal(final[emb], release[emb].to(torch.bfloat16))
