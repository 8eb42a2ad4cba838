"""train.py: configuration, a 2-process FSDP run on the CPU (gloo), 1-process vs 2-process agreement,
resume, SIGTERM. The runs use the tiny preset for a handful of steps."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (ROOT, SHARED, dream_layout, needs_shared, read_resume_state, run_script, tiny_checkpoint,
                      tiny_tokenizer)

TINY = ["--preset", "tiny", "--log_every=1", "--batch_size=4"]


def run(args, nproc=1, check=True, port=29631):
    return run_script(["train.py", *args], nproc=nproc, port=port, check=check)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def fresh_train():
    import train
    return importlib.reload(train)


# --- configuration ---

def test_flags_in_both_forms_and_presets():
    train = fresh_train()
    cfg = train.configure(["--task", "gsm8k", "--t_low=0.1", "--t_high", "0.9", "--lr=1.4e-6", "--seed", "7"])
    assert (cfg["task"], cfg["t_low"], cfg["t_high"], cfg["lr"], cfg["seed"]) == ("gsm8k", 0.1, 0.9, 1.4e-6, 7)
    train = fresh_train()
    cfg = train.configure(["--task", "gsm8k"])  # the users' command: the paper's aggressive setting
    assert (cfg["model"], cfg["t_low"], cfg["t_high"], cfg["lr"], cfg["jepa_weight"], cfg["predictor_layers"],
            cfg["epochs"], cfg["ema_decay"]) == ("GSAI-ML/LLaDA-8B-Base", 0.2, 0.7, 1e-5, 1.0, 3, 2, 0.996)
    train = fresh_train()
    cfg = train.configure(["--preset=wide-t", "--task=gsm8k"])
    assert (cfg["t_low"], cfg["t_high"], cfg["lr"]) == (0.1, 0.9, 1.4e-6)
    train = fresh_train()
    cfg = train.configure(["--preset", "wide-t", "--lr", "2e-6"])  # flags win over presets
    assert cfg["lr"] == 2e-6


def test_a_constant_edited_in_the_presets_file_takes_effect_and_is_printed(tmp_path, capsys):
    # under --preset tiny the preset's dict overrode predictor_layers, ema_decay, lr and the context rate
    # without a word, so an edit of train.py's constant did nothing; the presets are files now, an edit of
    # config/tiny.py takes effect, and every setting other than its constant is printed with its source
    import configurator
    presets = tmp_path / "config"
    presets.mkdir()
    text = open(os.path.join(configurator.PRESETS_DIR, "tiny.py")).read()
    assert "predictor_layers = 2\n" in text
    (presets / "tiny.py").write_text(text.replace("predictor_layers = 2\n", "predictor_layers = 5\n"))
    train = fresh_train()
    train.PRESETS_DIR = str(presets)
    cfg = train.configure(["--preset", "tiny", "--lr=0.01"])
    assert cfg["predictor_layers"] == 5 and cfg["ema_decay"] == 0.99 and cfg["lr"] == 0.01
    printed = capsys.readouterr().err
    assert "predictor_layers = 5 (default 3; " in printed and "tiny.py)" in printed
    assert "  lr = 0.01 (default 1e-05; flag)" in printed
    assert "t_low" not in printed  # unchanged settings are not listed
    # every preset file sets only settings train.py has (a typo would fail here, not in a run)
    for name in configurator.preset_names(configurator.PRESETS_DIR):
        fresh_train().configure(["--preset", name])


def test_config_file(tmp_path):
    path = tmp_path / "ablation.py"
    path.write_text("t_low = 0.2\nt_high = 0.2\nsymmetric = True\npredictor_layers = 0\n")
    train = fresh_train()
    cfg = train.configure(["--config", str(path)])
    assert (cfg["t_high"], cfg["symmetric"], cfg["predictor_layers"]) == (0.2, True, 0)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"epochs": "two"}))
    train = fresh_train()
    with pytest.raises(train.ConfigError, match="epochs expects an integer"):
        train.configure(["--config", str(path)])
    # nesting past the parser's or the decoder's recursion was a raw RecursionError (or MemoryError)
    for name, text in [("deep.json", "[" * 100000 + "]" * 100000), ("deep.py", "lr = " + "-" * 100000 + "1"),
                       ("long.py", "lr = " + "+".join(["1"] * 100000))]:
        (tmp_path / name).write_text(text)
        with pytest.raises(train.ConfigError, match=f"{name}.*(nested too deeply|not a literal)"):
            fresh_train().configure(["--config", str(tmp_path / name)])
    with pytest.raises(train.ConfigError, match="--lr expects a number"):
        fresh_train().configure(["--lr=" + "-" * 100000 + "1"])


@pytest.mark.parametrize("argv,message", [
    (["--t_low=0.7", "--t_high=0.2"], "t_low=0.7 must be below t_high=0.2"),
    (["--t_low=0.2", "--t_high=0.2"], "symmetric"),
    (["--jepa_weight=-1"], "jepa_weight .lambda. must be >= 0"),
    (["--task=gsm9k"], "--task='gsm9k' is not one of"),
    (["--model=llama-7b"], "unknown model 'llama-7b'"),
    (["--lr=fast"], "--lr expects a number"),
    (["--epochs=1.5"], "--epochs expects an integer"),
    (["--learning_rate=1e-5"], "unknown setting --learning_rate"),
    (["--preset=huge"], "unknown preset 'huge'"),
    (["--t_high"], "--t_high needs a value"),
    (["--task=django"], "needs --data_dir"),
    (["--ema_decay=1.0"], "ema_decay must be in"),
    # these exited 0 with nonsense or crashed after the model was loaded
    (["--weight_decay=-5"], r"--weight_decay=-5.0 is out of range: it must be >= 0"),
    (["--epochs=0"], r"--epochs=0 is out of range"),
    (["--save_every=-1"], r"--save_every=-1 is out of range"),
    (["--shuffled_target=true", "--jepa_weight=0"], "needs a JEPA term"),
    (["--seed=1180591620717411303424"], r"--seed=1180591620717411303424 is out of range"),  # overflowed raw
    (["--predictor_layers=100000"], r"--predictor_layers \(k\) must be in \[0, 64\]"),  # built until killed
])
def test_bad_configurations_fail_with_the_right_message(argv, message):
    train = fresh_train()
    with pytest.raises(train.ConfigError, match=message):
        train.configure(argv)


def test_bad_configuration_exits_before_loading_anything(tmp_path):
    proc = run(["--t_low=0.9", "--t_high=0.1", f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "must be below t_high" in proc.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("world,accum", [(1, 16), (2, 8), (8, 2)])
def test_total_batch_holds_on_any_number_of_ranks(world, accum):
    train = fresh_train()
    train.configure(["--task", "gsm8k"])  # the users' command: batch 2 per device, total 32
    assert train.resolve_grad_accum(train.settings(), world) == accum and world * train.batch_size * accum == 32


@pytest.mark.parametrize("argv,world,message", [
    ([], 3, "--total_batch=32 is not a multiple of 3 rank"),
    (["--grad_accum=2"], 1, "--grad_accum=2 gives an effective batch of 4, not --total_batch=32"),
    (["--total_batch=0", "--grad_accum=0"], 1, "both 0"),
])
def test_total_batch_mismatches_are_refused(argv, world, message):
    train = fresh_train()
    with pytest.raises(train.ConfigError, match=message):
        train.configure(["--task", "gsm8k", *argv])
        train.resolve_grad_accum(train.settings(), world)


@pytest.mark.parametrize("n,batch,world,ok", [(7, 3, 1, False), (8, 3, 1, True), (9, 2, 2, False), (10, 2, 2, False), (12, 2, 2, True)])
def test_shuffled_target_refuses_a_micro_batch_of_one(n, batch, world, ok):
    """7 examples in batches of 3 end with a batch of 1; 9 on 2 ranks x 2 end with a step of 1 + 0, topped
    up to 2 rows, one a rank; 10 end with a step of 2, one a rank."""
    train = fresh_train()
    train.configure(["--task", "gsm8k", "--shuffled_target=true", f"--batch_size={batch}", "--total_batch=0",
                     "--grad_accum=1"])
    if ok:
        train.check_derangeable(n, world)
    else:
        with pytest.raises(train.ConfigError, match="micro-batch of 1"):
            train.check_derangeable(n, world)


def test_grad_accum_alone_when_total_batch_is_off():
    train = fresh_train()
    train.configure(["--task", "gsm8k", "--total_batch=0", "--grad_accum=3"])
    assert train.resolve_grad_accum(train.settings(), 8) == 3


def test_lr_schedule():
    train = fresh_train()
    train.configure(["--lr=1.0", "--warmup_frac=0.1"])
    lrs = [train.lr_at(s, 100) for s in range(1, 101)]
    assert lrs[:10] == pytest.approx([s / 10 for s in range(1, 11)])
    assert lrs[9] == 1.0 and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone cosine decay
    assert train.lr_at(55, 100) == pytest.approx(0.5)  # half way through the decay


# --- runs ---

def test_two_process_fsdp_run_and_ema(tmp_path):
    out = str(tmp_path / "fsdp")
    run(TINY + ["--activation_checkpointing=true", "--max_steps=3", "--stop_step=1", f"--out_dir={out}"], nproc=2)
    log = read_log(out)
    assert log[-1]["step"] == 1 and all(torch.isfinite(torch.tensor(r["diffusion_loss"])) for r in log)
    state = read_resume_state(out)
    from safetensors.torch import load_file
    import model as M
    base = load_file(os.path.join(out, "base", "model.safetensors"))
    decay = 0.99  # the tiny preset's ema_decay
    moved = 0
    for name, online in state["trainable"].items():
        if not name.startswith("online."):
            continue
        key = M.release_key(name[len("online."):], "llada")
        theta0, target = base[key], state["target"][name[len("online."):]]
        assert torch.allclose(target, decay * theta0 + (1 - decay) * online, atol=1e-6)
        moved += int(not torch.equal(online, theta0))
    assert moved > 0  # the online parameters changed
    # continue to the end with resume: finite losses and a final checkpoint in the release layout
    run(TINY + ["--activation_checkpointing=true", "--max_steps=3", "--resume=true", f"--out_dir={out}"], nproc=2)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))
    final = load_file(os.path.join(out, "final", "model.safetensors"))
    assert set(final) == set(base) and any(not torch.equal(final[k], base[k]) for k in base)


def test_one_and_two_process_losses_agree(tmp_path):
    # 1 process accumulating 2 micro-batches sees exactly the 2 ranks' micro-batches, with the same views
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(TINY + ["--max_steps=2", "--grad_accum=2", f"--out_dir={one}"])
    run(TINY + ["--max_steps=2", "--grad_accum=1", f"--out_dir={two}"], nproc=2, port=29632)
    a, b = read_log(one), read_log(two)
    for key in ("diffusion_loss", "jepa_loss", "cosine", "grad_norm"):
        assert a[0][key] == pytest.approx(b[0][key], rel=1e-5, abs=1e-6), key
    assert a[1]["diffusion_loss"] == pytest.approx(b[1]["diffusion_loss"], rel=1e-4)  # after one identical update


def test_a_tied_model_trains_tied_on_one_and_two_ranks(tmp_path):
    # a LLaDA layout with weight_tying (iLLaDA-8B's): one parameter for the embedding and the head, under
    # FSDP2 too; the losses of 1 and 2 processes agree and final/ stores the head once, as the release does
    from dataclasses import replace

    from safetensors.torch import load_file
    import model as M
    torch.manual_seed(0)
    source = str(tmp_path / "tied")
    M.Transformer(replace(M.PRESETS["tiny"], tie_embeddings=True)).save_pretrained(source, tokenizer=tiny_tokenizer())
    args = ["train.py", "--task=tiny-regex", f"--model={source}", "--max_steps=2", "--batch_size=4", "--log_every=1",
            "--total_batch=8", "--grad_accum=0", "--device=cpu", "--dtype=float32"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_script([*args, f"--out_dir={one}"])
    run_script([*args, f"--out_dir={two}"], nproc=2, port=29634)
    for a, b in zip(read_log(one), read_log(two)):
        for key in ("diffusion_loss", "jepa_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for out in (one, two):
        final = load_file(os.path.join(out, "final", "model.safetensors"))
        assert "model.transformer.ff_out.weight" not in final
        back = M.from_pretrained(os.path.join(out, "final"))
        assert back.cfg.tie_embeddings and back.lm_head.weight is back.embed.weight
    base = load_file(os.path.join(source, "model.safetensors"))
    assert not torch.equal(final["model.transformer.wte.weight"], base["model.transformer.wte.weight"])


def test_reducing_every_micro_batch_trains_the_same(tmp_path):
    # two ranks, two micro-batches each: the gradients reduce-scattered after each micro-batch sum to those
    # reduce-scattered once (float rounding apart), so the logged losses and norms agree
    once, each = str(tmp_path / "once"), str(tmp_path / "each")
    run(TINY + ["--max_steps=2", "--grad_accum=2", f"--out_dir={once}"], nproc=2, port=29638)
    run(TINY + ["--max_steps=2", "--grad_accum=2", "--reduce_every_micro_batch=true", f"--out_dir={each}"], nproc=2,
        port=29639)
    a, b = read_log(once), read_log(each)
    for key in ("diffusion_loss", "jepa_loss", "grad_norm"):
        assert a[0][key] == pytest.approx(b[0][key], rel=1e-5, abs=1e-6), key
    assert a[1]["diffusion_loss"] == pytest.approx(b[1]["diffusion_loss"], rel=1e-4)


def test_bfloat16_paths_agree_with_float32(tmp_path):
    # the GPU's mixed precision, run on the CPU: autocast in one process, FSDP2's MixedPrecisionPolicy (bf16
    # parameters in compute, fp32 gradient reduction) under torchrun. Both must track the fp32 run to bf16
    # accuracy without equalling it (bf16 really ran), and keep fp32 master weights.
    from safetensors import safe_open
    ref, one, two = str(tmp_path / "fp32"), str(tmp_path / "one"), str(tmp_path / "two")
    run(TINY + ["--max_steps=2", "--grad_accum=2", f"--out_dir={ref}"])
    run(TINY + ["--max_steps=2", "--grad_accum=2", "--dtype=bfloat16", f"--out_dir={one}"])
    run(TINY + ["--max_steps=2", "--grad_accum=1", "--dtype=bfloat16", f"--out_dir={two}"], nproc=2, port=29636)
    fp32 = read_log(ref)
    for out in (one, two):
        log = read_log(out)
        assert log[0]["diffusion_loss"] != fp32[0]["diffusion_loss"], out
        for step in range(2):
            assert log[step]["diffusion_loss"] == pytest.approx(fp32[step]["diffusion_loss"], rel=2e-3), (out, step)
            for key in ("jepa_loss", "cosine"):
                assert log[step][key] == pytest.approx(fp32[step][key], abs=1e-2), (out, step, key)
        with safe_open(os.path.join(out, "final", "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}, out


@pytest.mark.parametrize("extra", [["--anchor_l2=1e-4"], ["--lora_rank=4", "--lora_dropout=0.3"],
                                   ["--val_holdout=400", "--batch_size=32"]])
def test_resumed_run_reproduces_uninterrupted(tmp_path, extra):
    # the anchor's base copy, and LoRA's adapter EMA and dropout generator, must all come back; and the data
    # order across an epoch boundary (95 examples in batches of 32: 3 steps an epoch)
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    run(TINY + ["--max_steps=5", *extra, f"--out_dir={full}"])
    run(TINY + ["--max_steps=5", *extra, "--stop_step=2", f"--out_dir={parts}"])
    assert not os.path.exists(os.path.join(parts, "final"))
    run(TINY + ["--max_steps=5", *extra, "--resume", f"--out_dir={parts}"])
    a, b = read_log(full), read_log(parts)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ("diffusion_loss", "jepa_loss", "grad_norm", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (ra["step"], key)
    from safetensors.torch import load_file
    fa, fb = load_file(os.path.join(full, "final", "model.safetensors")), \
        load_file(os.path.join(parts, "final", "model.safetensors"))
    assert all(torch.allclose(fa[k], fb[k], atol=1e-6) for k in fa)


def test_snapshots_are_whole_checkpoints_and_change_nothing(tmp_path):
    # the replication's learning curves: --snapshot_every writes the weights along the way, each a loadable checkpoint
    # with its run's settings; the run's final weights are those of a run without snapshots
    plain, snap = str(tmp_path / "plain"), str(tmp_path / "snap")
    run(TINY + ["--max_steps=4", f"--out_dir={plain}"])
    run(TINY + ["--max_steps=4", "--snapshot_every=2", f"--out_dir={snap}"])
    assert sorted(os.listdir(os.path.join(snap, "snapshots"))) == ["step2"]  # step 4 is final/
    step2 = os.path.join(snap, "snapshots", "step2")
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_config.json"} <= set(os.listdir(step2))
    from safetensors.torch import load_file
    fa, fb = load_file(os.path.join(plain, "final", "model.safetensors")), \
        load_file(os.path.join(snap, "final", "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not all(torch.equal(fa[k], v) for k, v in load_file(os.path.join(step2, "model.safetensors")).items())
    out = run_script(["evaluate.py", f"--checkpoint={step2}", "--task=tiny-regex", "--limit=2", "--gen_length=16",
                      "--steps=4", "--block_length=16", f"--out_dir={tmp_path / 'ev'}"])
    assert out.returncode == 0 and os.path.exists(tmp_path / "ev" / "tiny-regex-0shot.json")


def test_an_update_that_overflows_writes_nothing(tmp_path):
    # 1e39 is finite as a double and inf in float32; loss and gradient pass the guard, the
    # update does not, and an all-NaN final/ was written with rc 0
    out = str(tmp_path / "run")
    proc = run(TINY + ["--max_steps=1", "--lr=1e39", f"--out_dir={out}"], check=False)
    assert proc.returncode == 1 and "step 1: the update made the weights non-finite" in proc.stderr
    # the message claimed a resumable state and advised a lower --lr that resume refuses
    assert "it has no resumable state" in proc.stderr and "start a new run" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(os.path.join(out, "final"))


def test_a_cut_log_line_does_not_block_resume(tmp_path):
    # a disk that filled during a log write left half a line; --resume was a JSONDecodeError
    from harness import run_folder
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    run_folder.trim_log(str(path), 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    run_folder.trim_log(str(path), 1)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'


def test_resume_on_a_finished_run_loads_nothing(tmp_path):
    # on the tiny preset (save_every 0: no resume/) it said "no resumable state";
    # with resume/ it loaded the models and the state before it noticed final/
    out = str(tmp_path / "run")
    run(TINY + ["--max_steps=2", f"--out_dir={out}"])
    proc = run(TINY + ["--max_steps=2", "--resume=true", f"--out_dir={out}"])
    assert "is a finished run" in proc.stdout and "parameters" not in proc.stdout  # before the model is built


def test_wandb_logging(tmp_path):
    # --wandb_log sends log.jsonl's records (offline mode here); without wandb it is a named mistake
    out = str(tmp_path / "run")
    try:
        import wandb  # noqa: F401
    except ImportError:
        proc = run(TINY + ["--max_steps=2", "--wandb_log=true", f"--out_dir={out}"], check=False)
        assert proc.returncode == 2 and "needs the wandb package" in proc.stderr and not os.path.exists(out)
        pytest.skip("wandb is not installed: only the refusal is tested")
    import subprocess
    import sys
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "train.py", *TINY, "--max_steps=2", "--wandb_log=true", f"--out_dir={out}"],
                   cwd=root, env=env, check=True, capture_output=True)
    assert [r["step"] for r in read_log(out)] == [1, 2] and os.path.isdir(os.path.join(out, "wandb"))


def test_overwrite_deletes_only_a_run_of_train_py(tmp_path):
    # a folder holding the user's final/thesis.tex and a log.jsonl was "a run" and deleted;
    # --model S/final --out_dir S --overwrite deleted its own source model, then failed
    user = tmp_path / "user"
    (user / "final").mkdir(parents=True)
    (user / "final" / "thesis.tex").write_text("years of work")
    (user / "log.jsonl").write_text("{}\n")
    proc = run(TINY + ["--max_steps=1", "--overwrite=true", f"--out_dir={user}"], check=False)
    assert proc.returncode == 2 and "not a run of train.py" in proc.stderr
    assert (user / "final" / "thesis.tex").read_text() == "years of work"
    source = str(tmp_path / "source")
    run(TINY + ["--max_steps=1", f"--out_dir={source}"])
    proc = run(["--preset", "tiny", "--max_steps=1", "--model", f"{source}/final", "--overwrite=true",
                f"--out_dir={source}"], check=False)
    assert proc.returncode == 2 and "lies inside --out_dir" in proc.stderr
    assert os.path.exists(os.path.join(source, "final", "model.safetensors"))


def test_a_second_run_on_a_held_folder_stops(tmp_path):
    # two runs on one out_dir both started; their logs interleaved and one crashed at the rename
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running train.py holds it
        proc = run(TINY + ["--max_steps=1", f"--out_dir={out}"], check=False)
    assert proc.returncode == 2 and "is using" in proc.stderr and not (out / "log.jsonl").exists()
    run(TINY + ["--max_steps=1", "--overwrite=true", f"--out_dir={out}"])  # released: the folder is usable


def main_in_process(T, args, monkeypatch):
    """train.main(args) in this process, single-threaded; what a stopped process would release (its lock,
    its signal handlers) is released whatever it raises."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        T.main(args)
    finally:
        if T.run_folder._lock is not None:
            T.run_folder._lock.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_kill_during_the_final_save_loses_no_step(tmp_path, monkeypatch):
    # no resumable state was written at the last step, so a kill during the final save lost every step since
    # the last periodic save (with save_every 0, the tiny preset's, the whole run)
    import train
    T = importlib.reload(train)  # its defaults: earlier in-process tests may have changed its settings
    out, full = str(tmp_path / "run"), str(tmp_path / "full")
    run(TINY + ["--max_steps=3", f"--out_dir={full}"])
    assert not T.run_state.has_state(full)  # once final/ is whole the last state is deleted
    real = T.save_model

    def killed_at_final(*args):
        if args[-1] == "final":
            raise Killed
        return real(*args)
    monkeypatch.setattr(T, "save_model", killed_at_final)
    with pytest.raises(Killed):
        main_in_process(T, TINY + ["--max_steps=3", f"--out_dir={out}"], monkeypatch)
    assert T.run_state.has_state(out) and not os.path.exists(os.path.join(out, "final"))
    run(TINY + ["--max_steps=3", "--resume=true", f"--out_dir={out}"])
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]
    from safetensors.torch import load_file
    fa, fb = load_file(os.path.join(full, "final", "model.safetensors")), \
        load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def disk_with_room_for(monkeypatch, room):
    """A disk that reports `room` bytes free beyond the low-disk margin, and on which a resumable state (larger
    than the tiny model's final/) does not fit."""
    import errno
    import shutil
    from collections import namedtuple

    import torch.distributed.checkpoint as dcp

    from harness.outputs import LOW_DISK_BYTES
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, LOW_DISK_BYTES + room))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(dcp, "save", full)


def test_a_disk_with_room_for_final_but_not_a_last_state_finishes(tmp_path, monkeypatch, capsys):
    # the last-step state (37 MB for the tiny run) was written before final/ (7 MB), so a disk with room for
    # final/ but not for the state lost the run's last stretch, where a run without that state finished
    import train
    T = importlib.reload(train)
    out = str(tmp_path / "run")
    disk_with_room_for(monkeypatch, 16 << 20)
    main_in_process(T, TINY + ["--max_steps=3", f"--out_dir={out}"], monkeypatch)
    printed = capsys.readouterr().out
    assert "no room for a last resumable state before final/" in printed and "writing final/ directly" in printed
    assert os.path.exists(os.path.join(out, "final", "model.safetensors")) and not T.run_state.has_state(out)


@pytest.mark.parametrize("save_every", [0, 1])
def test_a_full_disk_at_the_final_save_says_whether_a_resume_can_continue(tmp_path, monkeypatch, save_every):
    # "free some space and resume" was said where no state was on disk to resume from
    import errno

    import train
    from harness.errors import RunError
    T = importlib.reload(train)
    out = str(tmp_path / "run")
    if not save_every:
        disk_with_room_for(monkeypatch, 16 << 20)

    real = T.modellib.save_checkpoint

    def full_at_final(state_dict, cfg, folder, **kwargs):
        if os.path.basename(folder) == "final.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state_dict, cfg, folder, **kwargs)
    monkeypatch.setattr(T.modellib, "save_checkpoint", full_at_final)
    with pytest.raises(RunError) as e:
        main_in_process(T, TINY + ["--max_steps=3", f"--save_every={save_every}", f"--out_dir={out}"], monkeypatch)
    n_bytes = sum(p.numel() * 4 for p in T.modellib.Transformer(T.modellib.PRESETS["tiny"]).parameters())
    assert f"free at least {n_bytes} bytes" in str(e.value)
    if save_every:
        assert "resume with --resume=true (from the state of step 3)" in str(e.value)
    else:
        assert "train again: no resumable state is on disk" in str(e.value) and "resume" not in str(e.value)


def test_a_state_left_beside_final_is_removed(tmp_path):
    # a stop between final/'s rename and the states' deletion left a state on disk for good
    import shutil
    out, stopped = str(tmp_path / "run"), str(tmp_path / "stopped")
    run(TINY + ["--max_steps=3", f"--out_dir={out}"])
    run(TINY + ["--max_steps=3", "--stop_step=2", f"--out_dir={stopped}"])
    shutil.copytree(os.path.join(stopped, "resume"), os.path.join(out, "resume"))
    proc = run(TINY + ["--max_steps=3", "--resume=true", f"--out_dir={out}"])
    assert "nothing to do" in proc.stdout and "removed the resumable state left beside" in proc.stdout
    assert not os.path.exists(os.path.join(out, "resume"))


class Killed(Exception):
    pass


def test_a_kill_after_base_is_written_leaves_a_folder_overwrite_takes(tmp_path, monkeypatch):
    # train_config.json, the marker --overwrite needs, was written after base/: a kill in between left a folder
    # that a plain run, --overwrite and --resume all refused
    import train
    T = importlib.reload(train)
    out = str(tmp_path / "run")
    real = T.modellib.Transformer.save_pretrained

    def killed_after(self, folder, **kwargs):
        real(self, folder, **kwargs)
        raise Killed
    monkeypatch.setattr(T.modellib.Transformer, "save_pretrained", killed_after)
    with pytest.raises(Killed):
        main_in_process(T, TINY + ["--max_steps=1", f"--out_dir={out}"], monkeypatch)
    assert sorted(os.listdir(out)) == [".lock", "base", "train_config.json"]
    monkeypatch.undo()
    run(TINY + ["--max_steps=1", "--overwrite=true", f"--out_dir={out}"])
    assert os.path.exists(os.path.join(out, "final"))


def test_a_kill_inside_overwrite_leaves_a_folder_overwrite_takes(tmp_path, monkeypatch):
    # --overwrite deleted the marker before the state: a kill in between left a state no command would touch
    import shutil

    import train
    T = importlib.reload(train)
    out = str(tmp_path / "run")
    run(TINY + ["--max_steps=2", "--stop_step=1", f"--out_dir={out}"])
    real, calls = shutil.rmtree, []

    def killed_at_the_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise Killed
        return real(path, *args, **kwargs)
    monkeypatch.setattr(T.run_folder.shutil, "rmtree", killed_at_the_second)
    with pytest.raises(Killed):
        main_in_process(T, TINY + ["--max_steps=1", "--overwrite=true", f"--out_dir={out}"], monkeypatch)
    assert os.path.exists(os.path.join(out, "train_config.json"))
    monkeypatch.undo()
    run(TINY + ["--max_steps=1", "--overwrite=true", f"--out_dir={out}"])
    assert [r["step"] for r in read_log(out)] == [1]


def test_linked_or_misplaced_entries_of_a_run_folder_are_refused(tmp_path):
    # a final.tmp linked to another checkpoint made a resumed run write its weights there (the link could not
    # be deleted, so the save went through it) and rename the link to final/
    import hashlib
    import model as M
    victim = tmp_path / "victim"
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(victim / "final"))  # another checkpoint's weights
    weights = victim / "final" / "model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    out = tmp_path / "run"
    run(TINY + ["--max_steps=2", "--stop_step=1", f"--out_dir={out}"])
    os.symlink(victim / "final", out / "final.tmp")
    proc = run(TINY + ["--max_steps=2", "--resume=true", f"--out_dir={out}"], check=False)
    assert proc.returncode == 2 and "final.tmp is a symlink" in proc.stderr and "Traceback" not in proc.stderr
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before
    os.remove(out / "final.tmp")
    (out / "snapshots").mkdir()
    os.symlink(victim / "final", out / "snapshots" / "step1")
    proc = run(TINY + ["--max_steps=2", "--resume=true", f"--out_dir={out}"], check=False)
    assert proc.returncode == 2 and "step1 is a symlink" in proc.stderr
    os.remove(out / "snapshots" / "step1")
    os.rmdir(out / "snapshots")
    (out / "final").write_text("not a folder")
    proc = run(TINY + ["--max_steps=2", "--resume=true", f"--out_dir={out}"], check=False)
    assert proc.returncode == 2 and "final is a file where train.py keeps a folder" in proc.stderr


def test_a_finished_run_is_compared_by_its_settings_as_resolved(tmp_path):
    """A finished run is compared by its settings as train_config.json keeps them. The failing inputs:
    --total_batch with --grad_accum 0 (derived: 8 / 4 = 2) was compared with the flag's 0, refusing the run's
    own settings; and 'chat' was left out of the comparison, so --chat=true (a chat-template run) took a
    plain-prompt run for itself and did nothing."""
    out = str(tmp_path / "run")
    args = TINY + ["--max_steps=2", "--total_batch=8", "--grad_accum=0", f"--out_dir={out}"]
    run(args)
    for same in ([], ["--chat=false"]):  # auto resolves to false for the tiny model: the same run
        proc = run(args + ["--resume=true"] + same)
        assert "finished run" in proc.stdout and "nothing to do" in proc.stdout
    proc = run(args + ["--resume=true", "--chat=true"], check=False)
    assert proc.returncode == 1 and "chat: 'false' -> 'true'" in proc.stderr


def test_resume_without_state_is_an_error(tmp_path):
    proc = run(TINY + ["--max_steps=2", "--resume", f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "no resumable state" in proc.stderr


# --- runs that cannot silently go wrong ---


def test_a_folder_holding_a_run_is_not_reused_silently(tmp_path):
    out = str(tmp_path / "run")
    run(TINY + ["--seed=0", "--max_steps=4", "--save_every=2", f"--out_dir={out}"])
    # another run into the same folder: refused, whatever it would write
    proc = run(TINY + ["--seed=1", "--max_steps=2", f"--out_dir={out}"], check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--overwrite=true" in proc.stderr
    # resuming it as another run: refused, naming what differs
    proc = run(TINY + ["--seed=1", "--max_steps=2", "--resume", f"--out_dir={out}"], check=False)
    assert proc.returncode == 1 and "other settings" in proc.stderr
    assert "seed: 0 -> 1" in proc.stderr and "max_steps: 4 -> 2" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(TINY + ["--seed=0", "--max_steps=4", "--batch_size=8", "--resume", f"--out_dir={out}"], check=False)
    assert proc.returncode == 1 and "batch_size: 4 -> 8" in proc.stderr and "finished run of other settings" in proc.stderr
    # resuming the finished run itself leaves final/ alone
    final = os.path.join(out, "final", "model.safetensors")
    before = os.stat(final).st_mtime_ns
    proc = run(TINY + ["--seed=0", "--max_steps=4", "--resume", f"--out_dir={out}"])
    assert "finished run" in proc.stdout and os.stat(final).st_mtime_ns == before
    # --overwrite replaces it: one fresh log, no state of the old run left behind
    run(TINY + ["--seed=1", "--max_steps=2", "--overwrite", f"--out_dir={out}"])
    assert [r["step"] for r in read_log(out)] == [1, 2]
    assert not os.path.exists(os.path.join(out, "resume"))


def test_resumed_log_has_each_step_once(tmp_path):
    out = str(tmp_path / "run")
    run(TINY + ["--max_steps=5", "--save_every=2", "--stop_step=3", f"--out_dir={out}"])
    # the stop saved step 3; a kill after step 3's log line but before its save leaves the state at 2
    import shutil
    shutil.rmtree(os.path.join(out, "resume"))
    run(TINY + ["--max_steps=5", "--save_every=2", "--stop_step=2", "--overwrite", f"--out_dir={out}"])
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "diffusion_loss": 0.0}) + "\n")
    run(TINY + ["--max_steps=5", "--save_every=2", "--resume", f"--out_dir={out}"])
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5]
    assert read_log(out)[2]["diffusion_loss"] != 0.0


@pytest.mark.parametrize("lr", ["50", "1e4"])
def test_a_diverged_run_stops_and_writes_no_final(tmp_path, lr):
    out = str(tmp_path / "run")
    proc = run(TINY + ["--max_steps=50", "--save_every=1", f"--lr={lr}", f"--out_dir={out}"], check=False)
    assert proc.returncode == 1 and "non-finite" in proc.stderr and "Traceback" not in proc.stderr
    step = int(re.search(r"step (\d+): non-finite", proc.stderr).group(1))
    assert not os.path.exists(os.path.join(out, "final"))
    with open(os.path.join(out, "resume", "meta.json")) as f:
        assert json.load(f)["step"] == step - 1  # the last good state, before the bad update
    state = read_resume_state(out)
    assert all(torch.isfinite(v).all() for v in state["trainable"].values() if torch.is_tensor(v))


@pytest.mark.parametrize("argv,message", [
    (["--lr=1e999"], "--lr must be a finite number"),
    (["--lr=nan"], "--lr expects a number"),
    (["--device=cuda"], "--device=cuda but"),
    (["--out_dir="], "--out_dir is empty"),
])
def test_run_mistakes_are_one_line(tmp_path, argv, message):
    if "cuda" in argv[0] and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run(TINY + ["--max_steps=2", f"--out_dir={tmp_path / 'x'}", *argv], check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # SIGINT: Ctrl-C
def test_a_stop_signal_saves_a_resumable_state(tmp_path, signum):
    out = str(tmp_path / "term")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--max_steps=100000", f"--out_dir={out}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path = os.path.join(out, "log.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(log_path) and os.path.getsize(log_path) > 0):
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    with open(os.path.join(out, "resume", "meta.json")) as f:
        stopped_at = json.load(f)["step"]
    assert 1 <= stopped_at < 100000 and read_log(out)[-1]["step"] == stopped_at


@pytest.mark.parametrize("layout,extra,port", [("llada", [], 29633), ("dream", [], 29634),
                                               ("llada", ["--lora_rank=4", "--lora_dropout=0"], 29635)])
def test_release_checkpoint_loads_sharded_and_matches_one_process(tmp_path, layout, extra, port):
    # a release-layout checkpoint: built on meta, sharded, filled from rank 0 (broadcast) under torchrun;
    # loaded directly in one process; the first steps must agree (LoRA without dropout: dropout draws from
    # each process's own generator)
    import model as M
    cfg = M.PRESETS["tiny"] if layout == "llada" else dream_layout(M.PRESETS["tiny"])
    torch.manual_seed(3)
    M.Transformer(cfg).save_pretrained(str(tmp_path / "ckpt"),
                                       tokenizer=tiny_tokenizer())
    common = TINY + [f"--model={tmp_path / 'ckpt'}", "--max_steps=2", "--activation_checkpointing=true", *extra]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(common + ["--grad_accum=2", f"--out_dir={one}"])
    run(common + ["--grad_accum=1", f"--out_dir={two}"], nproc=2, port=port)
    a, b = read_log(one), read_log(two)
    for key in ("diffusion_loss", "jepa_loss", "grad_norm"):
        assert a[0][key] == pytest.approx(b[0][key], rel=1e-5, abs=1e-6), key
    assert a[1]["diffusion_loss"] == pytest.approx(b[1]["diffusion_loss"], rel=1e-4)
    with open(tmp_path / "two" / "final" / "config.json") as f:
        assert json.load(f)["model_type"].lower() == layout  # saved back in the release's own layout
    assert not os.path.exists(tmp_path / "two" / "base")  # not a random initialisation


@needs_shared
def test_users_command_on_the_real_gsm8k_files(tmp_path):
    # `torchrun ... train.py --task gsm8k` with the paper's defaults, on the real release files, a tiny
    # LLaDA-layout checkpoint standing in for LLaDA-8B; then evaluate.py on what it wrote
    tiny_checkpoint(tmp_path / "ckpt")
    gsm8k, out = os.path.join(SHARED, "gsm8k", "openai"), tmp_path / "run"
    proc = run(["--task", "gsm8k", f"--data_dir={gsm8k}", f"--model={tmp_path / 'ckpt'}", "--max_len=512",
                "--max_steps=1", "--device=cpu", f"--out_dir={out}"], nproc=2, port=29637)
    kept = int(re.search(r"gsm8k: (\d+) training examples", proc.stdout).group(1))
    dropped = int(re.search(r"dropped (\d+) of 7473 examples longer than max_len=512", proc.stdout).group(1))
    assert kept + dropped == 7473 and kept > 0
    cfg = json.load(open(out / "train_config.json"))
    paper = (cfg["t_low"], cfg["t_high"], cfg["lr"], cfg["jepa_weight"], cfg["predictor_layers"])
    assert paper == (0.2, 0.7, 1e-5, 1.0, 3)
    record = read_log(str(out))[-1]
    assert record["step"] == 1 and 0 < record["jepa_loss"] < 2 and record["diffusion_loss"] > 0
    run_script(["evaluate.py", f"--checkpoint={out}", "--task=gsm8k", f"--data_dir={gsm8k}", "--limit=2",
                "--gen_length=16", "--steps=16"])
    summary = json.load(open(out / "eval" / "gsm8k-0shot.json"))  # beside final/, not inside it
    assert summary["n"] == 2 and 0 <= summary["accuracy"] <= 1
