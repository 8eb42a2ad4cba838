"""
What a training run reports as it goes: a tqdm bar on rank 0, and every log_every steps one record in
<out_dir>/log.jsonl (and in Weights & Biases with --wandb_log):

  {"step", "epoch", "lr", "tokens_per_s", "mfu", "diffusion_loss", "jepa_loss", ..., "grad_norm"}

tokens_per_s counts every rank's tokens since the last record; mfu is that rate times the model's FLOPs per
token over the devices' peak (None where the peak is unknown, as on CPU). Every rank calls `step`, so
that the throughput clock runs the same everywhere; only rank 0 writes.
"""

import json
import os
import time

from harness import run_state, runtime
from harness.outputs import disk_errors


class Progress:
    def __init__(self, s, cfg, master, world, dev, step, total_steps, model_flops):
        self.s, self.master, self.world = s, master, world
        self.model_flops, self.peak = model_flops, runtime.peak_flops(dev)
        self.log_file = open(os.path.join(s.out_dir, "log.jsonl"), "a") if master else None
        self.wandb_run = start_wandb(s, cfg) if master and s.wandb_log else None
        from tqdm import tqdm
        self.bar = tqdm(total=total_steps, initial=step, disable=not master, desc="train", dynamic_ncols=True)
        self.t0, self.tokens = time.time(), 0

    def step(self, step, epoch, lr, tokens, stats, last):
        """Count a finished optimizer step; write its record where log_every says, or where it is the last."""
        self.bar.update(1)
        self.tokens += tokens
        if not (step % self.s.log_every == 0 or last):
            return
        tps = self.tokens * self.world / max(time.time() - self.t0, 1e-9)
        record = {"step": step, "epoch": epoch, "lr": lr, "tokens_per_s": tps,
                  "mfu": (tps * self.model_flops / (self.peak * self.world)) if self.peak else None, **stats}
        if self.master:
            self.write(record)
            self.bar.set_postfix(l_diff=f"{stats['diffusion_loss']:.3f}", l_jepa=f"{stats.get('jepa_loss', 0.0):.3f}",
                                 lr=f"{lr:.2e}")
        self.t0, self.tokens = time.time(), 0

    def write(self, record):
        out_dir = self.s.out_dir
        with disk_errors(self.log_file.name, lambda: run_state.resume_advice(out_dir)):  # read on failure only
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(record, step=record["step"])

    def close(self):
        self.bar.close()
        if self.log_file:
            self.log_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(s, cfg):
    """A Weights & Biases run that receives the same records as log.jsonl (resumed runs continue the same
    wandb run: its id is the out_dir's name, so a --resume appends)."""
    import wandb
    name = s.wandb_run_name or os.path.basename(os.path.normpath(s.out_dir))
    return wandb.init(project=s.wandb_project, name=name, id=name, resume="allow", config=cfg, dir=s.out_dir)
