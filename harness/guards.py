"""
What stops a training run before it goes wrong silently: a non-finite loss or gradient stops the step before
the optimizer applies it, non-finite weights stop a save before anything is written, and a SIGTERM or
Ctrl-C stops the loop at the end of the step, with a resumable state. train.py's loop calls them; the one
sync of a step (agree) carries the stop request with the logged numbers, so every rank stops together.
"""

import math
import signal

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from harness import run_state
from harness.errors import RunError


class Diverged(RunError):
    pass


WATCHED = ("loss", "diffusion_loss", "jepa_loss", "grad_norm")


def check_finite(step, stats, out_dir):
    """Stop before the optimizer applies a NaN or inf: the weights and the last resumable state stay good."""
    bad = {k: v for k, v in stats.items() if k in WATCHED and not math.isfinite(v)}
    if bad:
        raise Diverged(f"step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}; the run stopped "
                       f"before this update and wrote no final/. {diverged_advice(out_dir)}")


def diverged_advice(out_dir):
    """What a diverged run leaves, and what to do: a resume keeps the run's settings, so a lower --lr is a
    new run."""
    state = "its last resumable state is in resume/" if run_state.has_state(out_dir) else "it has no resumable state"
    return (f"In {out_dir}, {state}; to try a lower --lr, start a new run (--overwrite=true or another --out_dir): "
            f"--resume keeps the run's settings")


def check_weights(step, params, dev, distributed, out_dir, lr):
    """Stop before non-finite weights are written anywhere (final/, a snapshot, resume/): an update can
    overflow where the loss and the gradient were finite (--lr 1e39 is finite as a double, inf in float32).
    Run only before a save, so the training step pays nothing."""
    bad = torch.zeros((), device=dev)
    for p in params:
        local = p.to_local() if isinstance(p, DTensor) else p
        if not torch.isfinite(local).all():
            bad += 1
            break
    if distributed:
        dist.all_reduce(bad)
    if bad.item():
        raise Diverged(f"step {step}: the update made the weights non-finite (--lr={lr:g} too high?); nothing was "
                       f"written for it. {diverged_advice(out_dir)}")


class StopFlag:
    """Set by SIGTERM or SIGINT (Ctrl-C): the loop finishes the optimizer step, saves a resumable state and
    exits. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)

    def request(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def agree(sums, grad_norm, stop, dev, distributed, world):
    """The one sync of a step: every rank gets the mean of the logged numbers, the gradient norm, and whether
    any rank wants to stop."""
    keys = sorted(sums)
    packed = torch.stack([sums[k] for k in keys] + [grad_norm.float().reshape(()).to(dev),
                                                    torch.tensor(float(stop), device=dev)]).to(dev)
    if distributed:
        flag = packed[-1:].clone()
        dist.all_reduce(packed)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        packed = torch.cat([packed[:-1] / world, flag])
    values = packed.tolist()
    return dict(zip(keys + ["grad_norm"], values[:-1])), values[-1] > 0
