"""
Samples from a diffusion LM: a canvas of masks after an optional prompt, filled by LLaDA's sampler
(sampler.py). With no prompt the canvas starts fully masked (BOS only, where the tokenizer has one): what
a pretrained base has learnt to generate from nothing.

  python sample.py --checkpoint out --prompt "Question: 2 + 3 = ?" --temperature 0.8
  python sample.py --prompt $'Convert natural language to regular expression.\n\nDescription: lines containing
      the word dog\nRegex:' --gen_length 16                 # out-tiny/ (python train.py --preset tiny)

A model fine-tuned on a task, as the tiny preset's is, has only learnt to answer that task's prompts: from a
fully masked canvas it ends the text at once, and its samples are empty (printed as such).
"""

import sys

import torch

import data
import model as modellib
from configurator import SEED_RANGE, check_ranges, configure, setting_keys
from harness.runtime import init_distributed, resolve_dtype, run_main
from sampler import Decoding, check_schedule, generate

# -----------------------------------------------------------------------------
# settings
checkpoint = "out-tiny"  # a train.py output folder (the tiny preset's by default), a checkpoint folder or a hub id
trust_remote_code = False  # run a tokenizer shipped as code beside the checkpoint (Dream's): for sources you trust
prompt = ""  # empty: a fully masked canvas
n = 4  # samples
gen_length = 64
block_length = 64
steps = 64
temperature = 1.0  # 0 = greedy (every sample of one prompt is then the same)
seed = 0
dtype = "auto"
device = "auto"
KEYS = setting_keys(globals())


def main(argv):
    configure(globals(), KEYS, argv)
    check_ranges(globals(), {"n": (1, None), "temperature": (0, None), "seed": SEED_RANGE})
    check_schedule(gen_length, block_length, steps)  # before the model loads
    _, _, dev = init_distributed(device)
    ckpt_dir = modellib.resolve_checkpoint_dir(checkpoint)
    net = modellib.load_for_inference(ckpt_dir, dtype=resolve_dtype(dtype, dev), device=dev)
    tokenizer = modellib.load_tokenizer(ckpt_dir, net.cfg, trust_remote_code)
    prompt_ids = data.encode_plain(tokenizer, prompt)
    if len(prompt_ids) + gen_length > net.cfg.max_seq_len:  # as evaluate.py: run, extrapolated, but say so
        print(f"warning: the prompt's {len(prompt_ids)} tokens + --gen_length={gen_length} exceed the model's "
              f"context window of {net.cfg.max_seq_len} tokens: positions past it are extrapolated", file=sys.stderr)
    generator = torch.Generator(device=dev).manual_seed(seed)
    out = generate(net, [prompt_ids] * n, steps=steps, gen_length=gen_length, block_length=block_length,
                   decoding=Decoding(temperature=temperature), generator=generator)
    for i, ids in enumerate(out.tolist()):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        print(f"--- sample {i}\n{prompt}{text if text.strip() else '(empty: the model ended the text at once)'}")


if __name__ == "__main__":
    run_main("sample.py", main, sys.argv[1:], lambda: 0)
