"""harness/outputs.py: a full disk is named whoever reports it, an unwritable folder fails first, a used
folder is refused without --resume/--overwrite, and a file is written whole or not at all."""

import errno
import json
import os
from collections import namedtuple

import pytest

from harness import outputs as O
from harness.errors import ConfigError, RunError

Usage = namedtuple("Usage", "total used free")


def test_a_full_disk_is_named(monkeypatch, tmp_path):
    target = str(tmp_path / "final" / "model.safetensors")
    with pytest.raises(RunError, match="no space left on the device while writing .*model.safetensors"):
        with O.disk_errors(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    # torch's writer says 'unexpected pos' instead: the free space tells
    monkeypatch.setattr(O.shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 4096))
    with pytest.raises(RunError, match="4096 bytes free"):
        with O.disk_errors(target):
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 704 vs 598")
    # any other failure stays what it is
    monkeypatch.setattr(O.shutil, "disk_usage", lambda path: Usage(10 << 30, 0, 10 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with O.disk_errors(target):
            raise RuntimeError("unexpected pos")


def test_the_checkpoint_writers_own_errors_are_named_when_the_disk_is_full(monkeypatch, tmp_path):
    """The resumable-state save raised torch's CheckpointException (a BaseException) and
    the final save safetensors' SafetensorError; neither was an OSError, so a full disk was a traceback."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException
    target = str(tmp_path / "resume.tmp")
    monkeypatch.setattr(O.shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 4096))
    for error in (CheckpointException("write failed", {0: (RuntimeError("unexpected pos 704 vs 598"), None)}),
                  SafetensorError("Error while serializing: IoError")):
        with pytest.raises(RunError, match="no space left"):
            with O.disk_errors(target):
                raise error
    with pytest.raises(KeyboardInterrupt):  # never taken for a disk error, however full the disk
        with O.disk_errors(target):
            raise KeyboardInterrupt
    monkeypatch.setattr(O.shutil, "disk_usage", lambda path: Usage(10 << 30, 0, 10 << 30))
    with pytest.raises(CheckpointException):  # room on the disk: the writer's error as it was
        with O.disk_errors(target):
            raise CheckpointException("write failed", {})
    with pytest.raises(RunError, match="no space left"):  # a rank's ENOSPC inside the exception, room now
        with O.disk_errors(target):
            raise CheckpointException("write failed", {1: (OSError(errno.ENOSPC, "No space left"), None)})


def test_a_full_disk_at_close_is_named_not_masked(tmp_path):
    """Evaluate's write failed, then the file's close flushed again and raised a second
    OSError outside the disk-full wrapper. With the wrapper around the open file, the close is inside."""
    class FullFile:
        name = str(tmp_path / "part.jsonl")

        def __enter__(self):
            return self

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *exc):
            raise OSError(errno.ENOSPC, "No space left on device")  # the close's flush

    with pytest.raises(RunError, match="no space left .*part.jsonl"):
        with O.disk_errors(FullFile.name), FullFile() as f:
            f.write("x")


def test_output_folders_are_checked_first(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write into"):
        O.prepare_output_dir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="--out_dir is empty"):
        O.prepare_output_dir("")
    O.prepare_output_dir(str(tmp_path / "new" / "folder"))
    assert os.listdir(tmp_path / "new" / "folder") == []


def test_a_used_folder_needs_resume_or_overwrite():
    O.refuse_used("d", [], "a run", resume=False, overwrite=False)
    O.refuse_used("d", ["log.jsonl"], "a run", resume=True, overwrite=False)
    O.refuse_used("d", ["log.jsonl"], "a run", resume=False, overwrite=True)
    with pytest.raises(ConfigError, match=r"d already holds a run \(log.jsonl\); pass --resume=true .* --overwrite"):
        O.refuse_used("d", ["log.jsonl"], "a run", resume=False, overwrite=False)
    with pytest.raises(ConfigError) as e:
        O.refuse_used("d", ["probe.json"], "a probe", resume=False, overwrite=False, can_resume=False)
    assert "--resume" not in str(e.value) and "--overwrite=true" in str(e.value)


def test_a_file_is_written_whole_or_not_at_all(monkeypatch, tmp_path):
    path = str(tmp_path / "summary.json")
    O.write_json(path, {"a": 1})
    assert open(path).read() == '{\n  "a": 1\n}' and os.listdir(tmp_path) == ["summary.json"]

    def cut(text):  # a kill or a full disk in the middle of the write
        raise OSError(errno.ENOSPC, "No space left on device")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: type("F", (), {
        "__enter__": lambda s: s, "__exit__": lambda s, *e: None, "write": lambda s, t: cut(t)})()
        if p.endswith(".tmp") else real_open(p, *a, **k))
    with pytest.raises(RunError, match="no space left"):
        O.write_jsonl(path, [{"b": 2}])
    monkeypatch.undo()
    assert open(path).read() == '{\n  "a": 1\n}'  # the old file, whole


def test_a_linked_tmp_file_is_replaced_not_written_through(tmp_path):
    # write_whole opened <path>.tmp as found: a symlink there sent the text into whatever it pointed to
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("someone else's file")
    path = tmp_path / "summary.json"
    os.symlink(elsewhere, str(path) + ".tmp")
    O.write_json(str(path), {"a": 1})
    assert elsewhere.read_text() == "someone else's file" and json.loads(path.read_text()) == {"a": 1}
    assert not os.path.lexists(str(path) + ".tmp")
