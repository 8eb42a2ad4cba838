"""bench.py end to end on the tiny preset: it runs, measures every variant and checks the samplers agree.
Speed targets are bench.py's to report, not the tests'."""

import json

from conftest import run_script, tiny_tokenizer


def test_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script(["bench.py", "--iters=1", "--warmup=1", "--batch_size=2", "--seq_len=48", "--prompt_len=16",
                       "--sampler_prompts=3", "--sampler_gen_length=16", "--sampler_block_length=8",
                       "--sampler_steps=8", "--lora_rank=4", "--variants=baseline,jepa,two_grad,jepa_lora",
                       f"--out={out}"], timeout=600)
    result = json.load(open(out))
    assert [r["variant"] for r in result["train"]] == ["baseline", "jepa", "two_grad", "jepa_lora"]
    assert all(r["step_s"] > 0 and r["peak_memory_gb"] > 0 for r in result["train"])
    assert set(result["ratios"]) == {"jepa/baseline", "two_grad/jepa"}
    assert result["sampler"]["identical_outputs"] is True
    assert "jepa/baseline" in proc.stdout and "sampler:" in proc.stdout


def test_flops_per_token_follows_table_1():
    # the paper's bookkeeping (Table 1): baseline 3F, DLLM-JEPA 4F, LLM-JEPA's two gradient views 6F (F = 2N)
    import bench
    from harness.runtime import flops_per_token
    n = 1000
    baseline, jepa = flops_per_token(n, jepa=False, lora=False), flops_per_token(n, jepa=True, lora=False)
    assert (baseline, jepa) == (3 * 2 * n, 4 * 2 * n)
    assert jepa / baseline == bench.FLOP_RATIOS["jepa/baseline"] and 12 * n / jepa == bench.FLOP_RATIOS["two_grad/jepa"]
    assert flops_per_token(n, jepa=True, lora=True) == 3 * 2 * n  # LoRA: no weight gradients for the base


def test_bench_measures_the_early_stop_on_a_checkpoint(tmp_path):
    import torch

    import model as M
    torch.manual_seed(0)
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(tmp_path / "ckpt"),
                                                     tokenizer=tiny_tokenizer())
    out = tmp_path / "bench.json"
    proc = run_script(["bench.py", "--variants=", "--sampler=false", f"--early_stop_checkpoint={tmp_path / 'ckpt'}",
                       "--early_stop_items=5", "--sampler_prompts=2", "--early_stop_gen_length=16",
                       "--early_stop_block_length=4", "--early_stop_steps=8", f"--out={out}"])
    e = json.load(open(out))["early_stop"]
    assert e["items"] == 5 and e["identical_cut_outputs"] is True and 0 <= e["blocks_skipped"] < 1
    assert "early stop (tiny-regex, 5 items" in proc.stdout and json.load(open(out))["train"] == []
