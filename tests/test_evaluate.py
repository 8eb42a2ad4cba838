"""evaluate.py: the command end to end (records written as they are scored, resume, 1 vs 2 processes,
named failures). The sampler's tests are in test_sampler.py, the scorers' in test_scoring.py and
test_spider.py."""

import contextlib
import errno
import json
from dataclasses import replace

import pytest
import torch
from conftest import run_script, tiny_checkpoint, tiny_tokenizer

import data as D
import evaluate as E
import model as M
from harness.errors import RunError

# --- the command, end to end on a tiny checkpoint ---

def test_evaluate_command_on_a_train_output_directory(tmp_path):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    window = 96  # a context window some 4-shot prompts + 16 generated tokens overrun: counted, not fatal
    M.Transformer(replace(M.PRESETS["tiny"], max_seq_len=window)).save_pretrained(str(run_dir / "final"), tokenizer=tok)
    proc = run_script(["evaluate.py", f"--checkpoint={run_dir}", "--task", "tiny-regex", "--limit=6", "--batch_size=4",
                       "--shots=4", "--gen_length=16", "--steps=8"])
    summary = json.load(open(run_dir / "eval" / "tiny-regex-4shot.json"))
    assert summary["n"] == 6 and set(summary) >= {"exact", "functional", "dfa"}
    rows = [json.loads(line) for line in open(run_dir / "eval" / "tiny-regex-4shot.jsonl")]
    assert [r["index"] for r in rows] == list(range(6))
    assert all(r["prompt"].count("Regex:") == 5 for r in rows)  # 4 shots + the item
    items, train_items = D.load_task("tiny-regex", "eval")[:6], D.load_task("tiny-regex", "train")
    lengths = [len(D.format_example("tiny-regex", x, tok, D.choose_shots(train_items, 4, x))[0]) for x in items]
    assert [r["prompt_tokens"] for r in rows] == lengths
    over = sum(n + 16 > window for n in lengths)
    assert 0 < over and summary["over_context_window"] == over
    assert f"{over} of 6 prompts" in proc.stdout


def test_two_process_evaluation_equals_one_process(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    args = ["evaluate.py", f"--checkpoint={tmp_path / 'ckpt'}", "--task=tiny-regex", "--limit=7", "--batch_size=2",
            "--gen_length=16", "--steps=8"]
    run_script([*args, f"--out_dir={tmp_path / 'one'}"])
    run_script([*args, f"--out_dir={tmp_path / 'two'}"], nproc=2, port=29651)
    a = [json.loads(x) for x in open(tmp_path / "one" / "tiny-regex-0shot.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "two" / "tiny-regex-0shot.jsonl")]
    assert len(a) == 7 and a == b  # rank 0 gathered every shard, in order, with the same generations


def test_chat_auto_follows_training(tmp_path):
    from harness import run_folder
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    chat = lambda name, ckpt: D.uses_chat("auto", name, run_folder.run_config(ckpt))  # noqa: E731 (evaluate.py's rule)
    assert chat("GSAI-ML/LLaDA-8B-Instruct", str(tmp_path / "nowhere"))
    assert not chat(str(run), str(run / "final"))
    (run / "train_config.json").write_text(json.dumps({"chat": "true"}))
    assert chat(str(run), str(run / "final"))
    (run / "train_config.json").write_text(json.dumps({"chat": "false"}))
    assert not chat("my-Instruct-run", str(run / "final"))
    assert D.uses_chat("true", "base") and not D.uses_chat("false", "x-Instruct")  # train.py's rule: the flag, else the name
    assert D.uses_chat("auto", "GSAI-ML/LLaDA-8B-Instruct") and not D.uses_chat("auto", "GSAI-ML/LLaDA-8B-Base")



def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@contextlib.contextmanager
def killed_at_item(monkeypatch, n):
    """evaluate.py in this process, killed (KeyboardInterrupt) as it scores its n-th item."""
    from metrics import scoring
    real_score, calls = scoring.score, []

    def dies(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_score(*a, **kw)
    monkeypatch.setattr(scoring, "score", dies)
    try:
        yield
    finally:
        monkeypatch.setattr(scoring, "score", real_score)


def test_records_are_kept_as_scored_and_resume_skips_them(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    args = [f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=6", "--batch_size=2", "--gen_length=16", "--steps=8"]
    # a run killed at its fourth item keeps the three scored before it
    with pytest.raises(KeyboardInterrupt):
        with killed_at_item(monkeypatch, 4):
            E.main([*args, f"--out_dir={tmp_path / 'killed'}"])
    part = tmp_path / "killed" / "tiny-regex-0shot.rank0.jsonl"
    assert len(read_jsonl(part)) == 3  # (items go in order of prompt length, not of index)

    # the full run, for reference
    run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'full'}"])
    full = read_jsonl(tmp_path / "full" / "tiny-regex-0shot.jsonl")
    # resume: the kept records stay as they are (a marked one proves it was not redone), a line cut short
    # by the kill is dropped and redone, the rest is generated and scored
    kept = read_jsonl(part)
    kept[0]["generation"] = "KEPT"
    redo = next(i for i in range(6) if i not in {r["index"] for r in kept})
    part.write_text("".join(json.dumps(r) + "\n" for r in kept) + f'{{"index": {redo}, "prom')
    proc = run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}", "--resume", "true"])
    assert "resuming: 3 of 6 items" in proc.stdout
    resumed = read_jsonl(tmp_path / "killed" / "tiny-regex-0shot.jsonl")
    marked = kept[0]["index"]
    assert [r["index"] for r in resumed] == list(range(6)) and resumed[marked]["generation"] == "KEPT"
    assert [r for r in resumed if r["index"] != marked] == [r for r in full if r["index"] != marked]
    assert not part.exists()  # merged into the .jsonl
    # without --resume earlier results are not replaced silently; --overwrite starts over
    proc = run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}"], check=False)
    assert proc.returncode == 2 and "already holds results" in proc.stderr
    run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}", "--overwrite=true"])
    assert read_jsonl(tmp_path / "killed" / "tiny-regex-0shot.jsonl") == full


def test_a_full_disk_while_writing_records_is_named_end_to_end(tmp_path, monkeypatch):
    """Through evaluate.main: the record's write fails with ENOSPC and the file's close
    (its flush) fails again. The one-line error names the part file; neither OSError escapes raw."""
    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise OSError(errno.ENOSPC, "No space left on device")  # the close's flush

    monkeypatch.setattr(E, "open_for_append", lambda path: FullFile())
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(RunError, match="no space left .*tiny-regex-0shot.rank0.jsonl"):
        E.main([f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=2", "--batch_size=2", "--gen_length=8",
                "--steps=4", f"--out_dir={tmp_path / 'out'}"])


def test_a_diverged_checkpoint_and_an_empty_split_are_named(tmp_path):
    tok = tiny_tokenizer()
    net = M.Transformer(M.PRESETS["tiny"])
    with torch.no_grad():
        net.blocks[0].attn.q_proj.weight.fill_(float("nan"))
    net.save_pretrained(str(tmp_path / "nan"), tokenizer=tok)
    proc = run_script(["evaluate.py", f"--checkpoint={tmp_path / 'nan'}", "--task=tiny-regex",
                       f"--out_dir={tmp_path / 'out'}"], check=False)
    assert proc.returncode == 1 and "non-finite weights" in proc.stderr and "Traceback" not in proc.stderr
    # sample.py (and bench.py, through the same load) sampled the NaN weights without a word
    proc = run_script(["sample.py", f"--checkpoint={tmp_path / 'nan'}", "--n=1"], check=False)
    assert proc.returncode == 1 and "non-finite weights" in proc.stderr and "Traceback" not in proc.stderr
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data_dir = tmp_path / "spider"
    data_dir.mkdir()
    (data_dir / "dev.json").write_text("[]")
    proc = run_script(["evaluate.py", f"--checkpoint={ckpt}", "--task=spider", f"--data_dir={data_dir}",
                       f"--out_dir={tmp_path / 'out'}"], check=False)
    assert proc.returncode == 2 and "no spider evaluation items" in proc.stderr


def test_masks_left_and_empty_outputs_are_counted(tmp_path):
    # a model whose every prediction is the mask token itself leaves the canvas unfilled
    tok = tiny_tokenizer()
    net = M.Transformer(M.PRESETS["tiny"])
    with torch.no_grad():  # every position's last hidden state is one positive vector; only the mask row sees it
        net.embed.weight.fill_(1.0)
        for block in net.blocks:
            block.attn.o_proj.weight.zero_(), block.mlp.down_proj.weight.zero_()
        net.lm_head.weight.zero_()
        net.lm_head.weight[M.PRESETS["tiny"].mask_token_id] = 1.0
    net.save_pretrained(str(tmp_path / "ckpt"), tokenizer=tok)
    run_script(["evaluate.py", f"--checkpoint={tmp_path / 'ckpt'}", "--task=tiny-regex", "--limit=3",
                "--gen_length=16", "--steps=8", f"--out_dir={tmp_path / 'out'}"])
    summary = json.load(open(tmp_path / "out" / "tiny-regex-0shot.json"))
    assert summary["masks_left"] == 3 and summary["empty_outputs"] == 3 and summary["exact"] == 0.0


def test_unwritable_out_dir_fails_before_any_work(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_script(["evaluate.py", f"--checkpoint={ckpt}", "--task=tiny-regex", f"--out_dir={blocker}"], check=False)
    assert proc.returncode == 2 and "evaluate.py: " in proc.stderr and "Traceback" not in proc.stderr


def test_early_stop_gives_the_same_records(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    args = ["evaluate.py", f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=8", "--batch_size=3",
            "--gen_length=32", "--block_length=8", "--steps=16"]
    run_script([*args, "--early_stop=false", f"--out_dir={tmp_path / 'full'}"])
    run_script([*args, "--early_stop=true", f"--out_dir={tmp_path / 'early'}"])
    full = read_jsonl(tmp_path / "full" / "tiny-regex-0shot.jsonl")
    assert full == read_jsonl(tmp_path / "early" / "tiny-regex-0shot.jsonl")


@pytest.mark.parametrize("flag", ["--steps=-4", "--batch_size=-1", "--block_length=-4", "--gen_length=-1", "--limit=-2"])
def test_numeric_flags_are_range_checked_before_loading(flag, tmp_path):
    # --steps -4 crashed after the model was loaded; --block_length -4 wrote a complete
    # results file of empty generations
    proc = run_script(["evaluate.py", "--checkpoint=nowhere", "--task=tiny-regex", flag, f"--out_dir={tmp_path}"],
                      check=False)
    assert proc.returncode == 2 and f"{flag.split('=')[0]}=" in proc.stderr and "out of range" in proc.stderr


def test_an_unfinished_run_is_named_as_such(tmp_path):
    # evaluate on a run without final/ said "has no config.json"
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")
    (run / "log.jsonl").write_text("")
    proc = run_script(["evaluate.py", f"--checkpoint={run}", "--task=tiny-regex", f"--out_dir={tmp_path / 'ev'}"],
                      check=False)
    assert proc.returncode == 2 and "did not finish" in proc.stderr and "--resume=true" in proc.stderr


def test_resume_refuses_records_of_other_settings(tmp_path):
    # --resume merged records made under another gen_length (or seed, temperature, steps,
    # checkpoint) and stated only the new settings; a smaller --limit gave "items": 4 beside "n": 8
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = str(tmp_path / "ev")
    base = [f"--checkpoint={ckpt}", "--task=tiny-regex", "--batch_size=4", f"--out_dir={out}"]
    run_script(["evaluate.py", *base, "--limit=8", "--gen_length=16", "--steps=8"])
    for other in (["--gen_length=32", "--steps=8"], ["--gen_length=16", "--steps=4"], ["--gen_length=16", "--steps=8", "--seed=3"]):
        proc = run_script(["evaluate.py", *base, "--limit=16", *other, "--resume=true"], check=False)
        assert proc.returncode == 2 and "made under other settings" in proc.stderr, other
        assert "Traceback" not in proc.stderr
    assert "gen_length: 16 -> 32" in run_script(["evaluate.py", *base, "--limit=16", "--gen_length=32", "--steps=8",
                                                 "--resume=true"], check=False).stderr
    run_script(["evaluate.py", *base, "--limit=4", "--gen_length=16", "--steps=8", "--resume=true"])
    summary = json.load(open(tmp_path / "ev" / "tiny-regex-0shot.json"))
    assert summary["items"] == summary["n"] == 4 and len(read_jsonl(tmp_path / "ev" / "tiny-regex-0shot.jsonl")) == 4


def test_resume_refuses_a_checkpoint_or_data_file_changed_in_place(tmp_path):
    # a resume keyed on paths alone summed records of two models (a checkpoint retrained in place) or of two
    # test files (one rewritten under the same --data_dir) into one summary, with rc 0
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data_dir = tmp_path / "nlrx"
    data_dir.mkdir()

    def write_items(outputs):
        rows = [{"messages": [{"role": "user", "content": f"lines with {o}"}, {"role": "assistant", "content": o}]}
                for o in outputs]
        for split in ("train", "test"):
            (data_dir / f"synth_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_items(["a", "b", "c", "d"])
    args = ["evaluate.py", f"--checkpoint={ckpt}", "--task=nlrx", f"--data_dir={data_dir}", "--gen_length=8",
            "--steps=4", f"--out_dir={tmp_path / 'ev'}"]
    run_script([*args, "--limit=2"])
    torch.manual_seed(1)  # the same path, other weights
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(ckpt, tokenizer=tiny_tokenizer())
    proc = run_script([*args, "--resume=true"], check=False)
    assert proc.returncode == 2 and "made under other settings (weights_sha256: " in proc.stderr
    assert "items_sha256" not in proc.stderr and "Traceback" not in proc.stderr
    tiny_checkpoint(tmp_path / "ckpt")  # the first weights again: resumable
    write_items(["a", "b", "c", "e"])
    proc = run_script([*args, "--resume=true"], check=False)
    assert proc.returncode == 2 and "(items_sha256: " in proc.stderr and "weights_sha256" not in proc.stderr
    write_items(["a", "b", "c", "d"])
    run_script([*args, "--resume=true"])
    assert len(read_jsonl(tmp_path / "ev" / "nlrx-0shot.jsonl")) == 4


def test_sampled_records_do_not_depend_on_batch_or_resume(tmp_path, monkeypatch):
    """With temperature > 0 one generator drew for the whole batch (seeded by rank), so a
    resumed evaluation drew other noise for its remaining items than an uninterrupted one, and another
    --batch_size other outputs. Each item now draws from its own generator, seeded by (seed, item)."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    args = [f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=6", "--gen_length=16", "--steps=8",
            "--temperature=1.0", "--seed=5"]
    run_script(["evaluate.py", *args, "--batch_size=4", f"--out_dir={tmp_path / 'full'}"])
    full = read_jsonl(tmp_path / "full" / "tiny-regex-0shot.jsonl")
    run_script(["evaluate.py", *args, "--batch_size=1", "--early_stop=false", f"--out_dir={tmp_path / 'ones'}"])
    assert read_jsonl(tmp_path / "ones" / "tiny-regex-0shot.jsonl") == full
    with pytest.raises(KeyboardInterrupt):
        with killed_at_item(monkeypatch, 3):
            E.main([*args, "--batch_size=2", f"--out_dir={tmp_path / 'killed'}"])
    run_script(["evaluate.py", *args, "--batch_size=3", f"--out_dir={tmp_path / 'killed'}", "--resume=true"])
    assert read_jsonl(tmp_path / "killed" / "tiny-regex-0shot.jsonl") == full
    assert len({r["generation"] for r in full}) > 1  # sampled, not one constant answer


def test_decoding_options_are_recorded_with_their_forward_passes(tmp_path):
    """The decoding options are flags, part of the settings a resume compares, and the summary
    says how many forward passes an item took (NFE)."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    args = [f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=4", "--gen_length=16", "--steps=8",
            "--early_stop=false"]
    run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'exact'}"])
    exact = json.load(open(tmp_path / "exact" / "tiny-regex-0shot.json"))
    assert exact["nfe"] == 8 and exact["config"]["threshold"] == 0.0
    run_script(["evaluate.py", *args, "--threshold=0.0001", f"--out_dir={tmp_path / 'fast'}"])
    fast = json.load(open(tmp_path / "fast" / "tiny-regex-0shot.json"))
    assert fast["nfe"] < 8 and all(r["nfe"] >= 1 for r in read_jsonl(tmp_path / "fast" / "tiny-regex-0shot.jsonl"))
    proc = run_script(["evaluate.py", *args, "--threshold=0.5", f"--out_dir={tmp_path / 'exact'}", "--resume=true"],
                      check=False)
    assert proc.returncode == 2 and "threshold: 0.0 -> 0.5" in proc.stderr
    run_script(["evaluate.py", *args, "--cache=dual", "--threshold=0.9", f"--out_dir={tmp_path / 'dual'}"])
    assert json.load(open(tmp_path / "dual" / "tiny-regex-0shot.json"))["config"]["cache"] == "dual"
    for bad, message in (("--remasking=high", "is not one of"), ("--threshold=1.5", "--threshold in [0, 1]"),
                         ("--cache=kv", "is not one of"), ("--cache=dual --cfg_scale=1", "without classifier-free")):
        proc = run_script(["evaluate.py", *args, *bad.split(), f"--out_dir={tmp_path / 'bad'}"], check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("script,args,message", [
    # a negative temperature sampled, a threshold of 2 printed a row, a schedule that does not divide failed
    # with a raw ValueError after the model loaded
    ("sample.py", ["--temperature=-1"], "--temperature=-1.0 is out of range"),
    ("sample.py", ["--gen_length=60", "--block_length=32"], "--gen_length=60 must be a multiple of --block_length=32"),
    ("sample.py", ["--gen_length=64", "--block_length=16", "--steps=6"], "--steps=6 must be a multiple of the number "
                                                                         "of blocks, --gen_length / --block_length = 4"),
    ("sample.py", ["--seed=-1"], "--seed=-1 is out of range"),
    ("replication/decoding.py", ["--threshold=2"], "--threshold=2.0 is out of range"),
    ("bench.py", ["--sampler_gen_length=60"], "--sampler_gen_length=60 must be a multiple of --sampler_block_length"),
    ("replication/decoding.py", ["--settings=256/30/256"], "--settings=256/30/256: gen_length=256 must be"),
    ("bench.py", ["--iters=0"], "--iters=0 is out of range"),
    ("evaluate.py", ["--task=tiny-regex", "--gen_length=30", "--block_length=16"], "--gen_length=30 must be a multiple"),
    ("evaluate.py", ["--task=tiny-regex", "--seed=99999999999999999999"], "--seed=99999999999999999999 is out of range"),
])
def test_every_scripts_flags_are_checked_before_a_model_loads(tmp_path, script, args, message):
    # in this process (run_main's one-line exit 2 for a ConfigError is tested in test_runtime.py): the
    # checkpoint does not exist, so a check that came after loading would name that instead
    import importlib
    from harness.errors import ConfigError
    module = importlib.import_module(script[:-3].replace("/", "."))
    module = importlib.reload(module)  # its constants as written: earlier in-process tests may have set them
    out = [f"--out={tmp_path / 'b.json'}"] if script == "bench.py" else \
        [f"--out_dir={tmp_path / 'ev'}"] if script == "evaluate.py" else []
    where = [] if script == "bench.py" else [f"--checkpoint={tmp_path / 'no-such-checkpoint'}"]
    with pytest.raises(ConfigError) as e:
        module.main([*where, *args, *out])
    assert message in str(e.value)


def test_ctrl_c_ends_an_evaluation_with_one_line_saying_how_to_continue(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "ev"
    # all 55 items at 64 steps: about 20 s of generation after the first record, so the run cannot end before
    # the signal lands, even on a loaded machine. The child gets Ctrl-C's default disposition, as from a
    # terminal: a shell's background job (pytest run with &) ignores SIGINT, and its children inherit that.
    proc = subprocess.Popen([sys.executable, "evaluate.py", f"--checkpoint={ckpt}", "--task=tiny-regex",
                             "--batch_size=1", "--gen_length=64", "--steps=64", f"--out_dir={out}"], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = out / "tiny-regex-0shot.rank0.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (part.exists() and part.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "interrupted: the records scored so far are kept; continue them with the same flags and --resume=true" in stderr
    assert 1 <= part.read_text().count("\n") < 55  # stopped part way, its records kept


def test_a_run_under_evaluation_cannot_be_overwritten(tmp_path, monkeypatch):
    # evaluate.py took no lock: train.py --overwrite deleted the run's final/ while it was being evaluated
    from metrics import scoring
    run_dir = tmp_path / "run"
    run_script(["train.py", "--preset=tiny", "--max_steps=1", "--batch_size=4", f"--out_dir={run_dir}"])
    real_score, overwrite = scoring.score, []

    def score_while_overwritten(*args, **kwargs):
        if not overwrite:
            overwrite.append(run_script(["train.py", "--preset=tiny", "--max_steps=1", "--batch_size=4",
                                         "--overwrite=true", f"--out_dir={run_dir}"], check=False))
        return real_score(*args, **kwargs)
    monkeypatch.setattr(scoring, "score", score_while_overwritten)
    import importlib
    evaluate = importlib.reload(E)  # its defaults: earlier in-process tests may have changed its settings
    evaluate.main([f"--checkpoint={run_dir}", "--task=tiny-regex", "--limit=2", "--gen_length=8", "--steps=4"])
    monkeypatch.undo()
    evaluate._run_lock.close()
    assert overwrite[0].returncode == 2 and "an evaluation of this one, is using" in overwrite[0].stderr
    assert (run_dir / "final" / "model.safetensors").exists() and (run_dir / "eval" / "tiny-regex-0shot.json").exists()


def test_sample_warns_of_a_prompt_past_the_context_window(tmp_path):
    # sample.py never compared prompt + canvas with the model's window (evaluate.py counts them)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "ckpt")
    M.Transformer(replace(M.PRESETS["tiny"], max_seq_len=16)).save_pretrained(ckpt, tokenizer=tiny_tokenizer())
    args = ["sample.py", f"--checkpoint={ckpt}", "--n=1", "--steps=8", "--block_length=8", "--prompt=lines"]
    assert "context window" not in run_script([*args, "--gen_length=8"]).stderr
    proc = run_script([*args, "--gen_length=16", "--steps=16"])
    assert "+ --gen_length=16 exceed the model's context window of 16 tokens" in proc.stderr


def test_an_empty_sample_is_printed_as_such(tmp_path, monkeypatch, capsys):
    # the tiny preset's model, sampled from a fully masked canvas (sample.py's default), ends the text at
    # once: four blank samples looked like a broken script
    import importlib

    import sample
    sample = importlib.reload(sample)  # its defaults
    eos = tiny_tokenizer().eos_token_id
    monkeypatch.setattr(sample, "generate", lambda net, prompts, **kw: torch.full((len(prompts), 8), eos))
    sample.main([f"--checkpoint={tiny_checkpoint(tmp_path / 'ckpt')}", "--n=2", "--gen_length=8",
                 "--block_length=8", "--steps=8"])
    assert capsys.readouterr().out.count("(empty: the model ended the text at once)") == 2
