"""
A training run's folder (train.py's --out_dir), and the rules that keep one run in it:

  <out_dir>/train_config.json   the run's settings, written before any other file: the marker that a
                                folder holds a run of train.py (what --overwrite may delete)
  <out_dir>/.lock               held by rank 0 for the life of the run: a second run on the folder stops
  <out_dir>/log.jsonl           one record per logged step; a resume trims it back to its state's step
  <out_dir>/final/              written whole at the end (a .tmp renamed): its presence means finished

  claim(saved, not_identity, master, distributed) before anything is loaded: a folder that holds a run is
      continued only with --resume=true (a finished run of these settings: nothing to do) and replaced
      only with --overwrite=true, which deletes only what train.py wrote, never the run's own --model
  checkpoint_of(folder)  the checkpoint a folder names: a run's final/, else the folder
  run_config(ckpt_dir)   the train_config.json a checkpoint came with ({} for a release)
  trim_log(path, step)   a resumed run's log without the records past the state's step
"""

import json
import os
import shutil

import torch.distributed as dist

from harness import run_state
from harness.errors import ConfigError, MissingInput, RunError, read_json_object
from harness.outputs import prepare_output_dir, refuse_used, write_whole

# every entry a run of train.py writes (eval/: evaluate.py's results of the run), and which are folders
RUN_ENTRIES = ("final", "final.tmp", "adapter", "base", "snapshots", "eval", "log.jsonl",
               "train_config.json") + run_state.NAMES
FOLDERS = {"final", "final.tmp", "adapter", "base", "snapshots", "eval"} | set(run_state.NAMES)
_lock = None  # rank 0's lock on <out_dir>/.lock, held for the life of the process


def run_config(ckpt_dir):
    """The train_config.json of the train.py run a checkpoint belongs to (in the folder, or beside its
    final/ or base/), as a dict; {} for a checkpoint that did not come from train.py."""
    for path in (os.path.join(ckpt_dir, "train_config.json"), os.path.join(ckpt_dir, "..", "train_config.json")):
        if os.path.exists(path):
            return read_json_object(path, "train_config.json")
    return {}


def claim(saved, not_identity, master, distributed):
    """Check saved['out_dir'] before anything expensive and take it (rank 0: the lock; with --overwrite the
    old run's files deleted). `saved`: the run's settings as its train_config.json keeps them. Returns False
    when --resume=true finds a finished run of these settings: there is nothing to do, and nothing was loaded."""
    out_dir, resume, overwrite = saved["out_dir"], saved["resume"], saved["overwrite"]
    check_entries(out_dir)
    if resume and not overwrite and os.path.isdir(os.path.join(out_dir, "final")):
        check_same_run(saved, not_identity)
        return False
    held = [e for e in RUN_ENTRIES if os.path.exists(os.path.join(out_dir, e))]
    refuse_used(out_dir, held, "a run", resume, overwrite)
    if held and overwrite and not resume:
        check_replaceable(out_dir, saved["model"], held)
    if resume and not run_state.has_state(out_dir):
        raise ConfigError(f"--resume=true but {out_dir} holds no resumable state (resume/)")
    if distributed:
        dist.barrier()  # every rank has looked before rank 0 deletes
    if master:
        prepare_output_dir(out_dir)
        global _lock
        _lock = lock(out_dir)
        if overwrite and not resume:  # the marker last: a kill midway leaves a folder --overwrite still takes
            for entry in sorted(held, key=lambda e: e == "train_config.json"):
                path = os.path.join(out_dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if distributed:
        dist.barrier()
    return True


def check_entries(out_dir):
    """Every entry train.py would write, rename or delete in out_dir is a real file or folder of its kind: a
    symlink would make a save or --overwrite act on what it points to (another run's weights), a file where
    a folder belongs (or the reverse) would fail deep in a save."""
    snapshots = os.path.join(out_dir, "snapshots")
    inside = [os.path.join("snapshots", n) for n in sorted(os.listdir(snapshots))] \
        if os.path.isdir(snapshots) and not os.path.islink(snapshots) else []
    for entry in list(RUN_ENTRIES) + inside:
        path = os.path.join(out_dir, entry)
        if os.path.islink(path):
            raise ConfigError(f"{path} is a symlink: train.py writes, renames and deletes the entries of --out_dir "
                              f"and would act on what it points to; put the real folder there, or use another "
                              f"--out_dir")
        folder = entry in FOLDERS or entry.startswith("snapshots")
        if os.path.exists(path) and os.path.isdir(path) != folder:
            raise ConfigError(f"{path} is a {'folder' if os.path.isdir(path) else 'file'} where train.py keeps a "
                              f"{'folder' if folder else 'file'}: move it away, or use another --out_dir")


def check_same_run(saved, not_identity):
    """A finished run (final/ appears whole, only at the end) may only be 'resumed' with its own settings:
    otherwise the user meant another run, and is told which settings differ."""
    on_disk = run_config(os.path.join(saved["out_dir"], "final"))
    differ = run_state.identity_differences(on_disk, run_state.identity(saved, not_identity))
    if differ:
        raise RunError(f"{saved['out_dir']} holds a finished run of other settings (saved -> now): "
                       f"{'; '.join(differ)}. Pick another --out_dir, or --overwrite=true to replace it")


def check_replaceable(out_dir, model, held):
    """--overwrite deletes only a run this project wrote (its marker: train_config.json), and never the
    folder that holds the run's own source model."""
    if not os.path.exists(os.path.join(out_dir, "train_config.json")):
        raise ConfigError(f"{out_dir} holds {', '.join(held)} but no train_config.json: not a run of train.py, so "
                          f"--overwrite will not delete it; move those files away or pick another --out_dir")
    source, folder = os.path.realpath(model), os.path.realpath(out_dir)
    if os.path.exists(model) and (source == folder or source.startswith(folder + os.sep)):
        raise ConfigError(f"--model={model} lies inside --out_dir={out_dir}, which --overwrite would delete first; "
                          f"copy the model elsewhere or pick another --out_dir")


def lock(out_dir):
    """An exclusive lock on <out_dir>/.lock (released when the process ends, however it ends), so a second
    run on the same folder stops at once instead of interleaving its log and racing for final/."""
    import fcntl
    handle = open(os.path.join(out_dir, ".lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ConfigError(f"another run, or an evaluation of this one, is using {out_dir} (it holds "
                          f"{out_dir}/.lock); wait for it, or pick another --out_dir") from None
    return handle


def checkpoint_of(folder):
    """The checkpoint a folder names: a train.py run folder means its final/ (an unfinished run is named as
    such), any other folder itself."""
    final = os.path.join(folder, "final")
    if os.path.isdir(final) and not any(f.endswith(".safetensors") for f in os.listdir(folder)):
        return final
    if any(os.path.exists(os.path.join(folder, f)) for f in ("train_config.json", "log.jsonl", "resume")) and \
            not os.path.exists(os.path.join(folder, "config.json")):
        raise MissingInput(f"{folder} is a train.py run that did not finish (no final/): resume it with train.py "
                           f"--resume=true --out_dir={folder}, or pass one of its snapshots/")
    return folder


def run_of(ckpt_dir):
    """The train.py run folder a checkpoint belongs to (its final/, base/ or snapshots/step<N>/), else None."""
    for candidate in (os.path.join(ckpt_dir, ".."), os.path.join(ckpt_dir, "..", "..")):
        if os.path.exists(os.path.join(candidate, "train_config.json")):
            return os.path.normpath(candidate)
    return None


def share(ckpt_dir):
    """A shared lock on the .lock of the run a checkpoint belongs to, held by an evaluation for its life: a
    train.py --overwrite of that run (which needs the lock alone) then refuses instead of deleting the
    checkpoint being read. None for a checkpoint outside a run, a run folder this user cannot write, or a run
    still training (it holds the lock itself, and no --overwrite can start before it ends)."""
    import fcntl
    run = run_of(ckpt_dir)
    if run is None:
        return None
    try:
        handle = open(os.path.join(run, ".lock"), "a")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def trim_log(path, step):
    """A resumed run logs steps after `step` again: drop the records the interrupted run wrote past it, and a
    line a kill or a full disk cut short (it is no JSON record)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_whole(path, "".join(kept))
