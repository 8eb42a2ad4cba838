"""runtime.py: what every script shares. A missing GPU is a one-line mistake, a stalled rank ends the run after --dist_timeout with a line that says so."""

import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch
from conftest import ROOT

from harness import runtime as RT
from configurator import read_config_file
from harness.errors import ConfigError, InputError

Usage = namedtuple("Usage", "total used free")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="--device=cuda but"):
        RT.resolve_device("cuda")
    assert RT.resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("text", ['{"preset": "tiny", "max_steps": 2}', '{"config": "other.json"}', 'preset = "tiny"\n'])
def test_preset_and_config_in_a_config_file_are_refused(tmp_path, text):
    # issue 24 item 5: {"preset": "tiny", "max_steps": 2} ran the defaults (LLaDA-8B, gsm8k), the preset ignored
    import configurator
    path = tmp_path / ("c.py" if "=" in text and "{" not in text else "c.json")
    path.write_text(text)
    settings = {"preset": "", "config": "", "max_steps": 0}
    with pytest.raises(ConfigError, match="cannot be set in a config file"):
        configurator.configure(settings, list(settings), [f"--config={path}"], presets={"tiny": {"max_steps": 9}})


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
           "--preset", "tiny", "--log_every=1", "--max_steps=100000", "--dist_timeout=10", f"--out_dir={out}"]
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
    assert "waited more than --dist_timeout=10 s" in err, err[-3000:]
