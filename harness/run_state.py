"""
The resumable state of a training run, and what makes resuming it safe.

  <out_dir>/resume/       the current state; meta.json is written last and holds the step, the run's
                          identity, a CRC-32 of every other file and a CRC-32 of those three ("meta_crc",
                          so an edited step or identity is a damaged state, never a wrong one)
  <out_dir>/resume.tmp/   a state being written (no meta.json until it is complete)
  <out_dir>/resume.old/   the state being replaced, for the moment of the swap

  save:  write resume.tmp  ->  resume -> resume.old  ->  resume.tmp -> resume  ->  delete resume.old
  load:  of resume, resume.tmp and resume.old, the complete one (meta.json, every checksum right) with
         the highest step; a kill at any point of the save leaves at least one, and the newest one wins
         (and becomes resume/ again, the others deleted)

What the state holds (state_dicts, the one description used by save and load): the trainable modules
(online model, predictor; with LoRA only the adapters, the frozen base comes back from its source), the
optimizer, the EMA target, and each rank's random generators. The data position is the step and the
views are a function of (seed, epoch, example), so nothing else is needed. The identity is the settings
that define the run (every setting but the few the script names as not defining it, such as out_dir and
the log cadence, plus the world size, which sets the batch order and the effective batch), so a new
setting is part of the identity unless someone decides otherwise; a state from a run with other values is
refused, naming the values.
"""

import json
import os
import pickle
import shutil
import zlib

import torch
import torch.distributed as dist

from harness.errors import RunError
from harness.outputs import LOW_DISK_BYTES, disk_errors
from harness.runtime import all_gather_objects

NAMES = ("resume", "resume.tmp", "resume.old")


def identity(saved, not_identity=()):
    """The settings that define a run: every one of its saved settings (the world size among them) but the
    few the script names."""
    return {k: v for k, v in saved.items() if k not in not_identity}


def identity_differences(saved, current):
    """'key: saved -> current' for every identity setting that differs."""
    return [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in current if saved.get(k) != current[k]]


# -----------------------------------------------------------------------------
# what the state holds


def target_state(target):
    """The EMA target's state: the copy's state dict, or the adapter EMA tensors by position."""
    if not isinstance(target, torch.nn.Module):  # jepa.AdapterEMATarget: the adapters' EMA, no module of its own
        return {str(i): t for i, t in enumerate(target.parameters())}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(target)


def state_dicts(trainable, target, optimizer):
    """{'trainable', 'optimizer'[, 'target']}: what save writes and what load fills in place. Not the frozen
    base of a LoRA run (16 GB for LLaDA-8B): a resumed run reloads it from its source."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    model_sd, optim_sd = get_state_dict(trainable, [optimizer], options=StateDictOptions(ignore_frozen_params=True))
    state = {"trainable": model_sd, "optimizer": optim_sd}
    if target is not None:
        state["target"] = target_state(target)
    return state


# -----------------------------------------------------------------------------
# files: checksums, completeness, the swap


def _rank_world(distributed):
    return (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)


def crc32(path):
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            value = zlib.crc32(chunk, value)
    return value


def checksums(folder, distributed):
    """{file name: CRC-32} of every file but meta.json; the ranks share the hashing (8B states are large)."""
    rank, world = _rank_world(distributed)
    names = sorted(n for n in os.listdir(folder) if n != "meta.json")
    mine = {n: crc32(os.path.join(folder, n)) for n in names[rank::world]}
    return {k: v for part in all_gather_objects(mine, distributed) for k, v in part.items()}


def read_meta(folder):
    """The folder's meta.json, or None when the state is incomplete (no meta.json, or one cut short)."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and set(META_KEYS) <= set(meta) else None


META_KEYS = ("step", "identity", "checksums")


def meta_crc(meta):
    """CRC-32 of meta.json's own content (its keys in a fixed order)."""
    return zlib.crc32(json.dumps({k: meta[k] for k in META_KEYS}, sort_keys=True).encode())


def seal(meta):
    """meta with its own checksum, as written by save."""
    return meta | {"meta_crc": meta_crc(meta)}


def damaged_files(folder, meta, distributed):
    """The files whose CRC-32 differs from meta.json's (or that are missing); meta.json itself when its own
    checksum fails (a state saved before meta_crc existed has none to check)."""
    if "meta_crc" in meta and meta["meta_crc"] != meta_crc(meta):
        return ["meta.json"]
    rank, world = _rank_world(distributed)
    names = sorted(meta["checksums"])
    mine = []
    for name in names[rank::world]:
        path = os.path.join(folder, name)
        if not os.path.exists(path) or crc32(path) != meta["checksums"][name]:
            mine.append(name)
    return sorted(n for part in all_gather_objects(mine, distributed) for n in part)


def remove_state(folder):
    """meta.json first: a folder half deleted by a kill is never taken for a complete state."""
    meta = os.path.join(folder, "meta.json")
    if os.path.exists(meta):
        os.remove(meta)
    shutil.rmtree(folder, ignore_errors=True)


def remove_all(out_dir):
    """Delete every state of the run: once final/ is whole they have done their job (an 8B one is large).
    Returns whether there was one."""
    held = [os.path.join(out_dir, n) for n in NAMES if os.path.isdir(os.path.join(out_dir, n))]
    for folder in held:
        remove_state(folder)
    return bool(held)


def swap_point(name):
    """A named point of the swap; the tests raise here to stand for a kill at exactly that moment."""


def swap_in(out_dir):
    """resume.tmp (complete) becomes resume/, keeping a complete state on disk at every point."""
    current, tmp, old = (os.path.join(out_dir, n) for n in NAMES)
    swap_point("start")
    if os.path.exists(old):
        remove_state(old)
    swap_point("old removed")
    if os.path.exists(current):
        os.replace(current, old)
    swap_point("current moved aside")
    os.replace(tmp, current)
    swap_point("new moved in")
    if os.path.exists(old):
        remove_state(old)
    swap_point("done")


def newest_complete(out_dir, distributed, log=print):
    """(folder, meta) of the complete state with the highest step, or None. A state whose checksums fail
    is skipped with a warning naming its damaged files."""
    found = []
    for name in NAMES:
        folder = os.path.join(out_dir, name)
        meta = read_meta(folder) if os.path.isdir(folder) else None
        if meta is not None:
            found.append((meta["step"], NAMES.index(name), folder, meta))
    for step, _, folder, meta in sorted(found, key=lambda x: (-x[0], x[1])):
        damaged = damaged_files(folder, meta, distributed)
        if not damaged:
            return folder, meta
        log(f"warning: the state in {folder} (step {step}) is damaged ({', '.join(damaged[:5])}); "
            f"looking for an older one")
    return None


def promote(out_dir, folder):
    """Make the chosen state resume/ again and delete the others, so that the next save's clean-up of
    resume.tmp/ can never delete the state the run continues from."""
    current = os.path.join(out_dir, "resume")
    for name in NAMES:
        path = os.path.join(out_dir, name)
        if path != folder and os.path.exists(path):
            remove_state(path)
    if folder != current:
        os.replace(folder, current)


def resume_advice(out_dir, needs=None):
    """What a run stopped by a full disk should do: resume where a complete state is on disk (its meta.json
    read, the checksums left to the resume), else train again. `needs`: the bytes to free, where known."""
    steps = [meta["step"] for meta in (read_meta(os.path.join(out_dir, n)) for n in NAMES
                                       if os.path.isdir(os.path.join(out_dir, n))) if meta is not None]
    room = f"free at least {needs} bytes" if needs else "free some space"
    if steps:
        return f"{room} and resume with --resume=true (from the state of step {max(steps)})"
    return f"{room} and train again: no resumable state is on disk (--save_every N writes one every N steps)"


def has_state(out_dir):
    return any(os.path.isdir(os.path.join(out_dir, n)) for n in NAMES)


# -----------------------------------------------------------------------------
# save and load


def check_not_linked(out_dir):
    """The swap renames folders inside out_dir; a resume/ (or .tmp/.old) that is a symlink to another disk
    cannot be renamed over, and every later save would crash: refuse it in one line instead."""
    for name in NAMES:
        if os.path.islink(os.path.join(out_dir, name)):
            raise RunError(f"{os.path.join(out_dir, name)} is a symlink: the crash-safe swap renames folders "
                           f"inside --out_dir and cannot follow one to another disk; put the whole --out_dir "
                           f"on that disk instead")


def save(out_dir, trainable, target, optimizer, step, run_identity, distributed):
    """Write the state beside the current one, then swap it in (see the top of this file)."""
    import torch.distributed.checkpoint as dcp
    check_not_linked(out_dir)
    rank, _ = _rank_world(distributed)
    tmp = os.path.join(out_dir, "resume.tmp")
    if rank == 0 and os.path.exists(tmp):
        remove_state(tmp)
    if distributed:
        dist.barrier()
    with disk_errors(tmp, lambda: resume_advice(out_dir)):
        dcp.save(state_dicts(trainable, target, optimizer), checkpoint_id=tmp, no_dist=not distributed)
        torch.save({"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None}, os.path.join(tmp, f"rng_{rank}.pt"))  # only LoRA dropout draws from them
        if distributed:
            dist.barrier()
        sums = checksums(tmp, distributed)
        if rank == 0:
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(seal({"step": step, "identity": run_identity, "checksums": sums}), f, indent=2)
            swap_in(out_dir)
    if distributed:
        dist.barrier()


def tensor_bytes(tree):
    """The bytes of every tensor in a nested dict or list, this rank's shards only (what this rank writes)."""
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    if isinstance(tree, torch.Tensor):
        local = tree.to_local() if hasattr(tree, "to_local") else tree
        return local.numel() * local.element_size()
    return 0


def folder_bytes(folder):
    """The bytes of the files in a folder (0 when there is none)."""
    if not os.path.isdir(folder):
        return 0
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, n)))


def last_state_room(out_dir, trainable, target, optimizer, final_bytes, distributed):
    """(fits, needs, free): whether the disk holds a state written now and the final model after it, in
    bytes. save() deletes a resume.tmp/ left by a kill, writes the new state, and the swap deletes resume/
    and resume.old/ before the final model is written: the end needs max(state - tmp, state + final - all
    three) beyond what is free. Where it lacks that room the run writes its final model directly and needs
    no more room than that model ever did. Rank 0 decides for every rank (the ranks save together)."""
    rank, _ = _rank_world(distributed)
    state = sum(all_gather_objects(tensor_bytes(state_dicts(trainable, target, optimizer)), distributed))
    decision = None
    if rank == 0:
        on_disk = {n: folder_bytes(os.path.join(out_dir, n)) for n in NAMES}
        needs = max(state - on_disk["resume.tmp"], state + final_bytes - sum(on_disk.values()))
        free = shutil.disk_usage(out_dir).free
        decision = (free >= needs + LOW_DISK_BYTES, needs, free)
    return all_gather_objects(decision, distributed)[0]


def load(out_dir, trainable, target, optimizer, run_identity, distributed, log=print):
    """Fill the modules and the optimizer from the newest complete state; returns its step. Raises
    RunError when there is none or when it belongs to another run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict
    check_not_linked(out_dir)
    found = newest_complete(out_dir, distributed, log)
    if found is None:
        raise RunError(f"--resume=true but {out_dir} holds no complete resumable state "
                       f"({', '.join(n + '/' for n in NAMES)} are missing, incomplete or damaged)")
    folder, meta = found
    differ = identity_differences(meta["identity"], run_identity)  # a key the saved run lacked differs too
    if differ:
        raise RunError(f"the state in {folder} belongs to another run; these settings differ (saved -> now): "
                       f"{'; '.join(differ)}. Resume with the run's settings, or start anew with --overwrite=true")
    if distributed:
        dist.barrier()
    if _rank_world(distributed)[0] == 0:
        promote(out_dir, folder)
    if distributed:
        dist.barrier()
    folder = os.path.join(out_dir, "resume")
    state = state_dicts(trainable, target, optimizer)
    dcp.load(state, checkpoint_id=folder, no_dist=not distributed)  # every key asked for must be there
    # strict=False only lets the frozen base (LoRA) stay as loaded from the source; the adapter EMA was
    # filled in place by dcp.load
    set_state_dict(trainable, [optimizer], model_state_dict=state["trainable"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    if isinstance(target, torch.nn.Module):  # an AdapterEMATarget was filled in place above
        set_model_state_dict(target, state["target"])
    rng_path = os.path.join(folder, f"rng_{_rank_world(distributed)[0]}.pt")
    if os.path.exists(rng_path):
        try:
            rng = torch.load(rng_path, weights_only=True)  # tensors only: an unpickled object could run code
        except pickle.UnpicklingError:
            raise RunError(f"{rng_path} holds objects besides tensors, which train.py never writes: a state "
                           f"from elsewhere; it was not loaded") from None
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    log(f"resumed from {folder} at step {meta['step']}")
    return meta["step"]
