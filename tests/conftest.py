# lets tests import the top-level scripts (model.py, jepa.py, ...) from any working directory, and holds what
# several test files share: one way to run a script as a user would (`python script.py ...` or torchrun with
# N CPU processes), the small model configs of both layouts, a batch of training examples, the tiny preset's
# tokenizer and a checkpoint of it, and a resumable state read back as one dict
import functools
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, above tests/
sys.path.insert(0, ROOT)
# the real release files (GSM8K, NL-RX, ...) beside the checkout; tests that read them skip without them
SHARED = os.path.join(ROOT, "..", "shared", "data")
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason="../shared/data (the real release files) is not beside this checkout")


def run_script(args, nproc=1, port=29600, check=True, timeout=300):
    """Run `python <args>` (nproc = 1) or `torchrun --nproc_per_node <nproc> <args>` in the repository root,
    one thread per process. With check, a non-zero exit fails with the tail of the output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    cmd = [sys.executable, *launcher, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """The tiny preset's tokenizer (data.train_tokenizer on the offline task), trained once per test run:
    tokenizers are not modified by the tests that share it."""
    import data
    return data.train_tokenizer(data.tiny_tokenizer_texts())


def tiny_checkpoint(path, **changes):
    """A random model of the tiny preset (seed 0; its config with `changes`) saved with the tiny tokenizer in
    the release layout: the checkpoint the script tests evaluate, sample, probe and fine-tune. Returns its path."""
    from dataclasses import replace

    import torch

    import model as M
    torch.manual_seed(0)
    M.Transformer(replace(M.PRESETS["tiny"], **changes)).save_pretrained(str(path), tokenizer=tiny_tokenizer())
    return str(path)


def dream_layout(cfg):
    """The same sizes in Dream's layout: biases on q, k, v and the logits shifted by one position."""
    from dataclasses import replace
    return replace(cfg, arch="dream", qkv_bias=True, shift_logits=True)


def small_config(**sizes):
    """A two-layer model of LLaDA's layout, small enough for a test to run hundreds of forwards."""
    from dataclasses import replace

    import model as M
    return replace(M.PRESETS["tiny"], **dict(vocab_size=64, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                                             mlp_hidden=128) | sizes)


def make_batch(B=4, T=40, seed=0, prompt_lengths=(5, 9, 3, 12), response_lengths=(20, 10, 30, 6), cfg=None):
    """A training batch as data.collate builds one: prompt + response + EOS, right-padded with EOS (random
    token ids of `cfg`, default small_config()); maskable = the response and every EOS after it, padding =
    the positions after the first EOS."""
    import torch
    cfg = cfg or small_config()
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, T), cfg.eos_token_id)
    maskable = torch.zeros(B, T, dtype=torch.bool)
    padding = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        p, r = prompt_lengths[b], response_lengths[b]
        ids[b, :p + r] = torch.randint(3, cfg.vocab_size, (p + r,), generator=g)
        maskable[b, p:] = True
        padding[b, p + r + 1:] = True
    return {"input_ids": ids, "maskable": maskable, "padding": padding}


def read_resume_state(out_dir):
    """A run's resumable state (a torch.distributed.checkpoint folder) as one plain dict, read in this process."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    path = os.path.join(out_dir, "resume.pt")
    dcp_to_torch_save(os.path.join(out_dir, "resume"), path)
    return torch.load(path, weights_only=False)
