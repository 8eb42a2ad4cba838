"""bench.py end to end on the tiny preset: it runs, measures every variant and checks the samplers agree;
and replication/decoding.py's comparison of the decoding options. Speed is theirs to report, not the tests'."""

import json

from conftest import run_script, tiny_checkpoint


def test_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script(["bench.py", "--iters=1", "--warmup=1", "--batch_size=2", "--seq_len=48", "--prompt_len=16",
                       "--sampler_prompts=3", "--sampler_gen_length=16", "--sampler_block_length=8",
                       "--sampler_steps=8", "--lora_rank=4", "--variants=baseline,jepa,two_grad,jepa_lora",
                       f"--out={out}"], timeout=600)
    result = json.load(open(out))
    assert [r["variant"] for r in result["train"]] == ["baseline", "jepa", "two_grad", "jepa_lora"]
    assert all(r["step_s"] > 0 and r["peak_memory_gb"] > 0 for r in result["train"])
    assert set(result["ratios"]) == {"jepa/baseline", "two_grad/jepa", "jepa/baseline_range", "two_grad/jepa_range",
                                     "jepa/baseline_flops", "two_grad/jepa_flops"}
    flops = result["flops_counted"]  # the steps' own products: DLLM-JEPA adds the EMA forward and the predictor
    assert flops["baseline"] < flops["jepa"] < flops["two_grad"]
    assert result["ratios"]["jepa/baseline_flops"] == flops["jepa"] / flops["baseline"]
    over = result["jepa_overhead"]
    assert set(over["pieces_s"]) == {"target view (masking)", "EMA target forward",
                                     "pooling, predictor, loss (fwd+bwd)", "AdamW on the predictor", "EMA update"}
    step = {r["variant"]: r["step_s"] for r in result["train"]}
    assert over["jepa_minus_baseline_s"] == step["jepa"] - step["baseline"]
    assert "time beyond them" in proc.stdout and "measured jepa - baseline" in proc.stdout
    low, high = result["ratios"]["jepa/baseline_range"]
    assert low <= result["ratios"]["jepa/baseline"] <= high  # the median of the step-by-step ratios
    assert all(r["step_s_range"][0] <= r["step_s"] <= r["step_s_range"][1] for r in result["train"])
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
    tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "bench.json"
    proc = run_script(["bench.py", "--variants=", "--sampler=false", f"--early_stop_checkpoint={tmp_path / 'ckpt'}",
                       "--early_stop_items=5", "--sampler_prompts=2", "--early_stop_gen_length=16",
                       "--early_stop_block_length=4", "--early_stop_steps=8", f"--out={out}"])
    e = json.load(open(out))["early_stop"]
    assert e["items"] == 5 and e["identical_cut_outputs"] is True and 0 <= e["blocks_skipped"] < 1
    assert "early stop (tiny-regex, 5 items" in proc.stdout and json.load(open(out))["train"] == []


def test_the_decoding_comparison_on_a_checkpoint(tmp_path):
    """replication/decoding.py: every decoding variant on the same items, interleaved, with its forward
    passes, scores and agreement with the exact sampler."""
    tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "decoding.json"
    proc = run_script(["-m", "replication.decoding", f"--checkpoint={tmp_path / 'ckpt'}", "--items=5",
                       "--settings=16/8/16,8/8/4", "--repeats=2", "--batch_size=2", f"--out={out}"], timeout=600)
    d = json.load(open(out))
    assert [(r["setting"], r["variant"]) for r in d["rows"]] == [
        (s, v) for s in ("16/8/16", "8/8/4") for v in ("exact", "threshold", "prefix", "dual", "threshold+dual")]
    exact = next(r for r in d["rows"] if r["variant"] == "exact" and r["setting"] == "16/8/16")
    assert exact["same_as_exact"] == 1.0 and exact["nfe"] <= 16 and "dfa" in exact["scores"]
    assert all(r["seconds_range"][0] <= r["seconds_median"] <= r["seconds_range"][1] for r in d["rows"])
    assert "decoding (tiny-regex, 5 items" in proc.stdout
    bad = run_script(["-m", "replication.decoding", "--checkpoint=x", "--settings=256/32"], check=False)
    assert bad.returncode == 2 and "gen/block/steps" in bad.stderr