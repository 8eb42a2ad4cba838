"""
What every script shares about the machine it runs on, so that no script imports another:

  init_distributed / close_distributed   the torchrun process group (NCCL on GPUs, gloo on the CPU), with a
                                         timeout that names itself when a rank stalls
  resolve_device / resolve_dtype         what --device and --dtype mean on this machine
  shard / full_state_dict / load_full_state   FSDP2 per block; the full weights on rank 0 (save, load)
  flops_per_token / peak_flops           the model-FLOPs accounting behind MFU (train.py and bench.py)
  digest / check_ranks_agree             every rank checked to run the same settings on the same data
  RunError, run_main                     a failure of the run (not of the flags) reported in one line; a
                                         rank ends with os._exit once its work is done (see run_main)
"""

import hashlib
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.errors import ConfigError, RunError

DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}  # None: by device (resolve_dtype)
DEVICES = ("auto", "cuda", "cpu")
# Seconds a rank waits in a collective before giving up. torch's default is 30 minutes; a stalled rank
# (stopped, swapping, hung on a filesystem) should end the run sooner, but the longest honest wait, rank 0
# loading or saving an 8B checkpoint while the others wait at a barrier, takes minutes on slow storage.
DIST_TIMEOUT = 900.0
_joined = False  # set when this process joined a torchrun group: run_main then ends it with os._exit


def resolve_device(setting):
    """torch.device for --device: 'auto' is the GPU when one is visible. Asking for cuda where there is none
    is a ConfigError, not an AttributeError deep inside torch."""
    if setting not in DEVICES:
        raise ConfigError(f"--device={setting!r} is not one of {', '.join(map(repr, DEVICES))}")
    if setting == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"--device=cuda but {why}; use --device=cpu (or auto)")
    use_cuda = setting == "cuda" or (setting == "auto" and torch.cuda.is_available())
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else "cpu")


def resolve_dtype(setting, dev):
    """The compute dtype a --dtype setting means on a device: 'auto' is bfloat16 on a GPU and float32 on the
    CPU; an explicit dtype holds on any device (bfloat16 on the CPU is how the tests run the GPU's
    mixed-precision paths)."""
    if setting not in DTYPES:
        raise ConfigError(f"--dtype={setting!r} is not one of {', '.join(map(repr, DTYPES))}")
    return DTYPES[setting] or (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def init_distributed(device_setting, timeout=DIST_TIMEOUT):
    """(world size, rank, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on GPUs,
    gloo on the CPU, each collective waiting at most `timeout` seconds (the scripts' --dist_timeout)."""
    dev = resolve_device(device_setting)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        global _joined
        _joined = True
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return world, dist.get_rank() if world > 1 else 0, dev


def close_distributed(world):
    """Leave the process group together: a rank that tears down gloo while a peer still works can abort it."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def describe_collective_failure(error, timeout):
    """A one-line reason for a collective that failed, or None when the error is not one."""
    text = str(error)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return (f"a collective waited more than --dist_timeout={timeout:g} s: another rank stalled or died "
                f"(see its output); raise --dist_timeout if a rank was only slow")
    if "connection closed by peer" in text.lower() or "connection reset" in text.lower():
        return "another rank died (see its output)"
    return None


def all_gather_objects(obj, distributed):
    """[every rank's obj] in rank order ([obj] in one process)."""
    if not distributed:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def digest(obj):
    """A short sha256 of a JSON-able value (settings, token ids): equal values, equal digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_ranks_agree(digests, distributed):
    """Every rank must run the same job: {what: digest} gathered from all ranks and compared with rank 0's
    at start. A node that reads other files at the same path (another copy of the data, an older checkout's
    settings) would otherwise train on its own data to the end, with rc 0."""
    if not distributed:
        return
    gathered = all_gather_objects(digests, distributed)
    for what, mine in gathered[0].items():
        others = [rank for rank, d in enumerate(gathered) if d.get(what) != mine]
        if others:
            raise RunError(f"rank(s) {', '.join(map(str, others))} have other {what} than rank 0 (digest "
                           f"{gathered[others[0]].get(what)} vs {mine}): every rank must be given the same flags and "
                           f"the same files; check the copies of the data each node reads")


def run_main(script, main_fn, argv, timeout, interrupted="interrupted"):
    """A script's __main__ (timeout: a callable giving the --dist_timeout in force): a mistake in the flags
    exits 2 with one line; a failed run (RunError, a stalled or dead rank) exits 1 with one line; Ctrl-C
    exits 130 with one line (`interrupted`: what was kept and how to go on); anything else is a bug and keeps
    its traceback. A finished run returns, or under torchrun ends here (end)."""
    code = 0
    try:
        main_fn(argv)
    except KeyboardInterrupt:
        print(f"\n{script}: {interrupted}", file=sys.stderr)
        code = 130
    except ConfigError as e:
        print(f"{script}: {e}", file=sys.stderr)
        code = 2
    except RunError as e:
        print(f"{script}: {e}", file=sys.stderr)
        code = 1
    except (RuntimeError, dist.DistBackendError) as e:
        reason = describe_collective_failure(e, timeout())
        if reason is None:
            raise
        print(f"{script}: {reason}", file=sys.stderr)
        code = 1
    if code or _joined:
        end(code)


def end(code):
    """Exit with `code`. A process that joined a torchrun group skips the interpreter's shutdown (os._exit,
    after flushing stdout and stderr): in 1 of 190 two-rank CPU runs of a stress loop here (torch 2.13, gloo,
    FSDP2), and in 3 test runs, a rank whose work was done and whose group was destroyed aborted while the
    interpreter tore itself down
    ('terminate called without an active exception', SIGABRT, no Python frame left on any thread), and
    torchrun reported the finished run as failed. The same teardown race, gloo's C++ threads outliving the
    interpreter, is described in pytorch/pytorch pull request 179291. Nothing is lost by skipping it: every
    script closes its files, its progress bar, its wandb run and its process group before main returns. A
    single process exits the ordinary way (and run_main returns when main does)."""
    if not _joined:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -----------------------------------------------------------------------------
# FSDP2: the model sharded over the ranks, and whole again on rank 0 for saving


def shard(module, mesh, mp_policy):
    """FSDP2: each block, then the root (embeddings, final norm, LM head)."""
    from torch.distributed.fsdp import fully_shard
    for block in module.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp_policy)
    fully_shard(module, mesh=mesh, mp_policy=mp_policy)


def full_state_dict(module, distributed):
    """The full state dict on rank 0 (CPU), None elsewhere."""
    if not distributed:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if dist.get_rank() == 0 else None


def load_full_state(module, full_state):
    """Fill a sharded module (materialised with to_empty) from the full state dict rank 0 holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    # a shallow copy: set_model_state_dict writes the loaded (sharded) tensors back into the dict it is given
    set_model_state_dict(module, dict(full_state) if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# -----------------------------------------------------------------------------
# FLOPs accounting for MFU


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 per GPU


def peak_flops(dev):
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(n_params, jepa, lora):
    """Model FLOPs per training token, for MFU: forward 2N + backward 4N (input and weight gradients; with
    LoRA 2N, the frozen base needs input gradients only) + the no-grad target forward 2N when lambda > 0."""
    return ((4 if lora else 6) + (2 if jepa else 0)) * n_params
