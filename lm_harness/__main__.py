"""
python -m lm_harness ...: EleutherAI lm-evaluation-harness's own command line (lm_eval), with this
project's model registered as `dllm_jepa` (diffusion_lm.py). Every lm_eval flag works as documented there:

  python -m lm_harness --model dllm_jepa --model_args checkpoint=out,gen_length=256 --tasks gsm8k
  python -m lm_harness --model dllm_jepa --model_args checkpoint=out,mc_num=128 --tasks mmlu --num_fewshot 5
  python -m lm_harness --model dllm_jepa --model_args checkpoint=out --tasks my_task --include_path my_tasks/

Needs lm-eval (requirements-lm-eval.txt).
"""

import sys

from lm_eval.__main__ import cli_evaluate

import lm_harness.diffusion_lm  # noqa: F401 (registers dllm_jepa)
from harness.runtime import run_main

if __name__ == "__main__":  # a mistake in the model_args (a ConfigError) is one line, as in every script here
    run_main("lm_harness", lambda argv: cli_evaluate(), sys.argv[1:], lambda: 0)
