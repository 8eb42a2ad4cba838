"""bench.py end to end on the tiny preset: it runs, measures every variant and checks the samplers agree.
Speed targets are bench.py's to report, not the tests'."""

import json

from conftest import run_script


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
