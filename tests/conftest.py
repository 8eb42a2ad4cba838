# lets tests import the top-level scripts (model.py, jepa.py, ...) from any working directory, and gives
# them one way to run a script as a user would: `python script.py ...` or torchrun with N CPU processes
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
