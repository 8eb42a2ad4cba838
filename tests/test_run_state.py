"""run_state.py: the resumable state survives a kill at every point of its save (the kill injected at the
exact point, not by timing), a damaged or half-written state is never loaded, and a state from another
run is refused."""

import json
import os
import shutil

import pytest
import torch
import torch.nn as nn

from harness import run_state as RS
from harness.runtime import RunError

IDENTITY = {"seed": 0, "lr": 1e-3, "world_size": 1}


def make_run(seed):
    torch.manual_seed(seed)
    trainable = nn.ModuleDict({"online": nn.Linear(4, 3)})
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=1e-3)
    trainable["online"](torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return trainable, optimizer


def save(out, seed, step):
    trainable, optimizer = make_run(seed)
    RS.save(str(out), trainable, None, optimizer, step, IDENTITY, distributed=False)
    return trainable["online"].weight.detach().clone()


def load(out, identity=IDENTITY):
    trainable, optimizer = make_run(99)
    step = RS.load(str(out), trainable, None, optimizer, identity, distributed=False, log=lambda *a: None)
    return step, trainable["online"].weight.detach().clone()


class Killed(Exception):
    pass


@pytest.mark.parametrize("point", ["start", "old removed", "current moved aside", "new moved in", "done"])
def test_a_kill_at_any_point_of_the_swap_keeps_the_newest_complete_state(tmp_path, monkeypatch, point):
    save(tmp_path, seed=1, step=1)
    save(tmp_path, seed=2, step=2)  # now resume/ is step 2; its swap left no resume.old behind
    assert sorted(os.listdir(tmp_path)) == ["resume"]

    def kill(name):
        if name == point:
            raise Killed(name)
    monkeypatch.setattr(RS, "swap_point", kill)
    with pytest.raises(Killed):
        save(tmp_path, seed=3, step=3)
    monkeypatch.undo()
    expected = make_run(3)[0]["online"].weight.detach()
    step, weight = load(tmp_path)
    assert step == 3 and torch.equal(weight, expected)
    assert sorted(os.listdir(tmp_path)) == ["resume"]  # the state loaded is resume/ again
    # and the next save starts from a clean layout
    save(tmp_path, seed=4, step=4)
    assert sorted(os.listdir(tmp_path)) == ["resume"] and load(tmp_path)[0] == 4


def test_a_kill_while_writing_leaves_the_previous_state(tmp_path, monkeypatch):
    save(tmp_path, seed=1, step=1)

    def dies(*args, **kwargs):
        raise Killed("while hashing the new shards")
    monkeypatch.setattr(RS, "checksums", dies)  # the shards are written, meta.json is not
    with pytest.raises(Killed):
        save(tmp_path, seed=2, step=2)
    monkeypatch.undo()
    assert os.path.isdir(tmp_path / "resume.tmp") and not os.path.exists(tmp_path / "resume.tmp" / "meta.json")
    step, weight = load(tmp_path)
    assert step == 1 and torch.equal(weight, make_run(1)[0]["online"].weight.detach())


def test_a_damaged_shard_is_caught_by_its_checksum(tmp_path):
    save(tmp_path, seed=1, step=1)
    shutil.copytree(tmp_path / "resume", tmp_path / "resume.old")  # an older complete copy, as after a kill
    with open(tmp_path / "resume.old" / "meta.json") as f:
        meta = json.load(f)
    meta["step"] = 0
    (tmp_path / "resume.old" / "meta.json").write_text(json.dumps(RS.seal(meta)))
    shard = next(n for n in os.listdir(tmp_path / "resume") if n.endswith(".distcp"))
    data = bytearray((tmp_path / "resume" / shard).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "resume" / shard).write_bytes(bytes(data))
    warnings = []
    assert RS.newest_complete(str(tmp_path), False, log=warnings.append)[1]["step"] == 0
    assert shard in warnings[0] and "damaged" in warnings[0]
    shutil.rmtree(tmp_path / "resume.old")
    with pytest.raises(RunError, match="no complete resumable state"):
        load(tmp_path)


def test_an_edited_meta_step_is_a_damaged_state(tmp_path):
    # meta.json's own step had no checksum; edited 30 -> 40, the run resumed "at step 40"
    # with the step-30 weights
    save(tmp_path, seed=1, step=30)
    path = tmp_path / "resume" / "meta.json"
    path.write_text(path.read_text().replace('"step": 30', '"step": 40'))
    warnings = []
    assert RS.newest_complete(str(tmp_path), False, log=warnings.append) is None
    assert "meta.json" in warnings[0] and "damaged" in warnings[0]
    with pytest.raises(RunError, match="no complete resumable state"):
        load(tmp_path)


@pytest.mark.parametrize("meta", ["", "{", "[]", '{"step": 3}'])
def test_an_empty_or_cut_meta_is_an_incomplete_state(tmp_path, meta):
    save(tmp_path, seed=1, step=1)
    (tmp_path / "resume" / "meta.json").write_text(meta)
    with pytest.raises(RunError, match="no complete resumable state"):
        load(tmp_path)


def test_a_symlinked_state_is_refused_in_one_line(tmp_path):
    # a resume/ kept on another disk through a symlink crashed every later save
    other = tmp_path / "other_disk"
    run = tmp_path / "run"
    run.mkdir()
    save(other, seed=1, step=1)
    os.symlink(other / "resume", run / "resume")
    with pytest.raises(RunError, match="is a symlink"):
        load(run)
    with pytest.raises(RunError, match="is a symlink"):
        save(run, seed=2, step=2)
    assert load(other)[0] == 1  # the linked state is untouched


def test_a_state_from_another_run_is_refused(tmp_path):
    save(tmp_path, seed=1, step=1)
    with pytest.raises(RunError, match=r"seed: 0 -> 7; lr: 0.001 -> 0.002"):
        load(tmp_path, {"seed": 7, "lr": 2e-3, "world_size": 1})
    with pytest.raises(RunError, match="world_size: 1 -> 2"):
        load(tmp_path, {**IDENTITY, "world_size": 2})


class Payload:
    """An object whose unpickling runs code: what a crafted file inside resume/ could hold."""
    def __reduce__(self):
        return (os.makedirs, ("RAN-FROM-A-PICKLE",))


def test_a_pickled_object_in_a_states_rng_file_does_not_run(tmp_path, monkeypatch):
    # the random-generator file was read with weights_only=False: any object pickled into it ran on --resume
    # (the checksums are CRC-32s, which whoever crafts the file recomputes)
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "run", seed=1, step=3)
    folder = str(tmp_path / "run" / "resume")
    torch.save({"cpu": torch.get_rng_state(), "cuda": None, "extra": Payload()}, os.path.join(folder, "rng_0.pt"))
    meta = json.load(open(os.path.join(folder, "meta.json")))
    meta["checksums"] = RS.checksums(folder, False)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(RS.seal({k: meta[k] for k in RS.META_KEYS}), f)
    with pytest.raises(RunError, match="rng_0.pt holds objects besides tensors"):
        load(tmp_path / "run")
    assert not (tmp_path / "RAN-FROM-A-PICKLE").exists()
