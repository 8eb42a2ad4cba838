"""
Where the scripts write, and the three rules every output follows:

  prepare_output_dir   a folder is created and written to before any expensive work, so a read-only or
                       missing place fails in the first second, not after the last pass
  refuse_used          a folder that already holds these results is continued only with --resume and
                       replaced only with --overwrite; never silently mixed (train, evaluate, probe)
  write_whole          a file is written as <file>.tmp and renamed, so a kill leaves the old file or the
                       new one, never a cut one that a later run would read as whole
  disk_errors          a write that failed because the disk is full is reported as that, in one line

Nothing here knows what a run is (harness/run_folder.py does).
"""

import errno
import json
import os
import shutil
from contextlib import contextmanager

from harness.errors import ConfigError, RunError

LOW_DISK_BYTES = 64 << 20
# Writers that report a full disk in their own words: torch's distributed checkpoint (CheckpointException,
# a BaseException) and safetensors (SafetensorError); matched by name, so neither is imported here.
FOREIGN_WRITE_ERRORS = ("CheckpointException", "SafetensorError")


def prepare_output_dir(path, flag="--out_dir"):
    """Create the folder and write a file in it now (the folder is then known writable)."""
    if not path:
        raise ConfigError(f"{flag} is empty; name a folder for the results")
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"cannot write into {path} ({e.strerror}); pass {flag}=<a writable folder>") from None


def refuse_used(folder, held, what, resume, overwrite, can_resume=True):
    """Raise unless `held` (the entries of these results already in `folder`) is empty, or the user said
    what to do with them: --resume continues them, --overwrite replaces them."""
    if not held or resume or overwrite:
        return
    choices = "pass --resume=true to continue, --overwrite=true to replace" if can_resume \
        else "pass --overwrite=true to replace"
    raise ConfigError(f"{folder} already holds {what} ({', '.join(held)}); {choices}, or another --out_dir")


def remove_entry(path):
    """Delete the file, folder or symlink at `path` (a link itself, never what it points to); nothing there:
    nothing to do."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def write_whole(path, text):
    """`text` into `path` through a .tmp rename (same folder, so the rename is atomic); a .tmp left there,
    a link among them, is removed first rather than written through."""
    with disk_errors(path):
        remove_entry(path + ".tmp")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def write_json(path, obj):
    write_whole(path, json.dumps(obj, indent=2))


def write_jsonl(path, rows):
    write_whole(path, "".join(json.dumps(r) + "\n" for r in rows))


def is_disk_full(error, path):
    """ENOSPC anywhere in the error's chain, or under LOW_DISK_BYTES free beside `path`: torch's own writer
    reports a full disk as 'unexpected pos ...' (inline_container.cc), so the free space is checked too."""
    seen, todo = set(), [error]
    while todo:  # the chain of causes, and a CheckpointException's failures (rank -> the error it caught)
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        failures = getattr(e, "failures", None)  # {rank: (exception, traceback)}
        caught = [x for v in failures.values() for x in (v if isinstance(v, tuple) else (v,))] \
            if isinstance(failures, dict) else []
        todo += [x for x in [e.__cause__, e.__context__] + caught if isinstance(x, BaseException)]
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError:
        return False
    return free < LOW_DISK_BYTES


@contextmanager
def disk_errors(path, then="free some space and run it again"):
    """Re-raise a write that failed because the disk is full as a RunError that says so and what to do
    (`then`, text or a callable giving it, asked only when the disk is full: the caller knows whether a resume
    can continue); any other failure as it was."""
    try:
        yield
    except BaseException as e:  # CheckpointException is one; KeyboardInterrupt and the rest pass on below
        writer = isinstance(e, (OSError, RuntimeError)) or type(e).__name__ in FOREIGN_WRITE_ERRORS
        if not writer or not is_disk_full(e, path):
            raise
        try:
            free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or '.').free} bytes"
        except OSError:
            free = "? bytes"
        advice = then() if callable(then) else then
        raise RunError(f"no space left on the device while writing {path} ({free} free); {advice}") from e
