"""runtime.py: what every script shares. A missing GPU is a one-line mistake, a stalled rank ends the run after --dist_timeout with a line that says so."""

import importlib
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch
from conftest import ROOT, run_script

from harness import runtime as RT
from configurator import read_config_file
from harness.errors import ConfigError, InputError, RunError

Usage = namedtuple("Usage", "total used free")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="--device=cuda but"):
        RT.resolve_device("cuda")
    assert RT.resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("text", ['{"preset": "tiny", "max_steps": 2}', '{"config": "other.json"}', 'preset = "tiny"\n'])
def test_preset_and_config_in_a_config_file_are_refused(tmp_path, text):
    # {"preset": "tiny", "max_steps": 2} ran the defaults (LLaDA-8B, gsm8k), the preset ignored
    import configurator
    path = tmp_path / ("c.py" if "=" in text and "{" not in text else "c.json")
    path.write_text(text)
    settings = {"preset": "", "config": "", "max_steps": 0}
    with pytest.raises(ConfigError, match="cannot be set in a config file"):
        configurator.configure(settings, list(settings), [f"--config={path}"], presets=configurator.PRESETS_DIR)


def test_a_second_configure_starts_from_the_constants_not_the_last_flags(capsys):
    # a script's main() called twice in one process (the tests do) kept the first call's flags where the
    # second named none, and printed them as the constants
    import configurator
    settings = {"lr": 1e-5, "out_dir": "out"}
    assert configurator.configure(settings, ["lr", "out_dir"], ["--lr=2e-5", "--out_dir=elsewhere"]) == \
        {"lr": 2e-5, "out_dir": "elsewhere"}
    capsys.readouterr()
    assert configurator.configure(settings, ["lr", "out_dir"], ["--lr=3e-5"]) == {"lr": 3e-5, "out_dir": "out"}
    assert "lr = 3e-05 (default 1e-05; flag)" in capsys.readouterr().err
    assert settings["out_dir"] == "out"


@pytest.mark.parametrize("name,text,message", [
    ("bad.py", "lr = 1e-5\nt_low = (\n", r"bad.py:\d+: "),
    ("bad.py", "lr = 1e-5\nimport os\n", r"bad.py:2: only 'key = literal' lines"),
    ("bad.py", "lr = 1e-5\nseed = int('3')\n", r"bad.py:2: the value of seed is not a literal"),
    ("bad.json", '{"lr": 1e-5,\n "seed": }', r"bad.json:2: "),
    ("bad.json", '[1, 2]', "expected a JSON object"),
])
def test_config_file_mistakes_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        read_config_file(str(tmp_path / name))


def test_a_stalled_rank_ends_the_run_with_a_named_timeout(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29671", "train.py",
           "--preset", "tiny", "--log_every=1", "--max_steps=100000", "--dist_timeout=4", f"--out_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log_path = os.path.join(out, "log.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and not (os.path.exists(log_path) and os.path.getsize(log_path) > 0):
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "train.py"], capture_output=True, text=True)
    pids = sorted(int(p) for p in workers.stdout.split())
    assert len(pids) == 2, workers.stdout
    os.kill(pids[1], signal.SIGSTOP)  # one rank stops answering
    try:
        _, err = proc.communicate(timeout=150)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):  # torchrun has usually ended the stopped rank already
            try:
                os.kill(pids[1], sig)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "waited more than --dist_timeout=4 s" in err, err[-3000:]


RANKS_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from harness import runtime

def main(argv):
    world, rank, dev = runtime.init_distributed("cpu", 60)
    data = [[1, 2, 3], [4, 5]] if rank == 0 or {same} else [[1, 2, 3], [4, 6]]  # same size, other tokens
    runtime.check_ranks_agree({{"settings": runtime.digest({{"lr": 1e-5}}), "data": runtime.digest(data)}}, world > 1)
    print("agreed")
    runtime.close_distributed(world)

runtime.run_main("ranks.py", main, [], lambda: 60)
print("not reached: a rank ends inside run_main")
"""


@pytest.mark.parametrize("same", [True, False])
def test_ranks_given_other_data_are_stopped_at_start(tmp_path, same):
    """Rank 1 given other data of the same size trained to the end with rc 0."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT.format(root=ROOT, same=same))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={29681 + same}", str(script)], env=env, capture_output=True, text=True,
                          timeout=120)
    if same:
        assert proc.returncode == 0 and proc.stdout.count("agreed") == 2
        assert "not reached" not in proc.stdout  # the ranks skipped the interpreter's shutdown (runtime.end)
    else:
        assert proc.returncode != 0 and "rank(s) 1 have other data than rank 0" in proc.stderr


@pytest.mark.parametrize("joined,code", [(False, 0), (False, 2), (True, 0), (True, 1)])
def test_a_rank_ends_without_the_interpreters_shutdown(monkeypatch, capsys, joined, code):
    """A two-rank run whose work was done aborted at interpreter shutdown now and then (SIGABRT,
    'terminate called without an active exception', no Python frame): a rank that joined a group ends with
    os._exit after flushing; a single process keeps the ordinary exit and run_main returns on success."""
    ended, flushed = [], []
    monkeypatch.setattr(RT, "_joined", joined)
    monkeypatch.setattr(RT.os, "_exit", lambda c: ended.append(("os._exit", c, list(flushed))))
    monkeypatch.setattr(RT.sys.stdout, "flush", lambda: flushed.append("stdout"))
    monkeypatch.setattr(RT.sys.stderr, "flush", lambda: flushed.append("stderr"))

    def main(argv):
        print("work done")
        if code == 1:
            raise RunError("a run failed")
        if code == 2:
            raise ConfigError("--lr=x is not a number")

    if not joined and code:
        with pytest.raises(SystemExit) as stop:
            RT.run_main("s.py", main, [], lambda: 60)
        assert stop.value.code == code and ended == []
    else:
        RT.run_main("s.py", main, [], lambda: 60)  # os._exit is patched: it returns here
        assert ended == ([("os._exit", code, ["stdout", "stderr"])] if joined else [])


def test_digest_is_of_the_value():
    assert RT.digest({"a": [1, 2], "b": 0.5}) == RT.digest({"b": 0.5, "a": [1, 2]})
    assert RT.digest([[1, 2, 3], [4, 5]]) != RT.digest([[1, 2, 3], [4, 6]])
    assert RT.digest([[1, 2], [3]]) != RT.digest([[1], [2, 3]])


CTRL_C_AT_MAIN = """
import runpy, sys
from harness import runtime
real = runtime.run_main

def interrupted(argv):
    raise KeyboardInterrupt

# the script's own __main__ runs, its main replaced by a Ctrl-C
runtime.run_main = lambda script, main, argv, *rest: real(script, interrupted, argv, *rest)
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["probe.py", "evaluate.py", "train.py"])
def test_ctrl_c_is_one_line_saying_how_to_go_on(script):
    # Ctrl-C in evaluate.py and probe.py printed a traceback; each script's line names what it kept and how
    # to go on
    proc = run_script(["-c", CTRL_C_AT_MAIN, script], check=False)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == [f"{script}: {importlib.import_module(script[:-3]).INTERRUPTED}"]
    assert "run it again" in proc.stderr or "--resume=true" in proc.stderr
