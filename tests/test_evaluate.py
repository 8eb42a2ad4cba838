"""evaluate.py: the sampler on a tiny model, and the command end to end (records written as they are
scored, resume, 1 vs 2 processes). The scorers' tests are in test_scoring.py and test_spider.py."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import run_script

import data as D
import evaluate as E
import model as M

SMALL = replace(M.PRESETS["tiny"], vocab_size=48, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, mlp_hidden=64)
MASK = SMALL.mask_token_id


def tiny_model(layout="llada", seed=0):
    cfg = SMALL if layout == "llada" else replace(SMALL, arch="dream", qkv_bias=True, shift_logits=True)
    torch.manual_seed(seed)
    model = M.Transformer(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so confidences differ clearly
        model.lm_head.weight.mul_(50)
    return model


PROMPTS = [[2, 5, 6, 7], [2, 9], [2, 11, 12, 13, 14, 15, 16]]


# --- the sampler ---

@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_sampler_schedule_and_frozen_tokens(layout):
    model = tiny_model(layout)
    canvases = []
    out = E.generate(model, PROMPTS, steps=8, gen_length=16, block_length=8, on_step=canvases.append)
    assert out.shape == (3, 16) and not (out == MASK).any()
    assert len(canvases) == 8
    previous = None
    for step, canvas in enumerate(canvases):
        block, j = divmod(step, 4)
        for b, p in enumerate(PROMPTS):
            row = canvas[b]
            assert row[:len(p)].tolist() == p  # the prompt never changes
            gen = row[len(p):len(p) + 16]
            before = previous[b][len(p):len(p) + 16] if previous is not None else torch.full((16,), MASK)
            newly = (before == MASK) & (gen != MASK)
            assert int(newly.sum()) == 2  # 8 masked per block / 4 steps per block
            assert not newly[:block * 8].any() and not newly[(block + 1) * 8:].any()  # only the current block
            committed = before != MASK
            assert torch.equal(gen[committed], before[committed])  # committed tokens never change
        previous = canvas
    assert torch.equal(out, E.generate(model, PROMPTS, steps=8, gen_length=16, block_length=8))  # deterministic


def test_uneven_schedule():
    # m = 8 masked, 3 steps: 3, 3, 2 (one extra in the first m % steps steps)
    assert E.num_transfer_tokens(torch.tensor([8, 6, 1]), 3).tolist() == [[3, 3, 2], [2, 2, 2], [1, 0, 0]]
    model = tiny_model()
    counts = []
    E.generate(model, PROMPTS[:1], steps=3, gen_length=8, block_length=8,
               on_step=lambda c: counts.append(int((c[0, 4:] != MASK).sum())))
    assert counts == [3, 6, 8]


@pytest.mark.parametrize("layout", ["llada", "dream"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_batched_equals_one_by_one(layout, cfg_scale):
    model = tiny_model(layout)
    kwargs = dict(steps=8, gen_length=16, block_length=8, cfg_scale=cfg_scale)
    batched = E.generate(model, PROMPTS, **kwargs)
    for b, p in enumerate(PROMPTS):
        assert torch.equal(batched[b], E.generate(model, [p], **kwargs)[0])


def test_block_logits_equal_whole_sequence_logits():
    # what the sampler computes for the block equals the whole-sequence logits at those positions
    model = tiny_model()
    ids = torch.randint(3, 48, (2, 12))
    at = torch.zeros(2, 12, dtype=torch.bool)
    at[:, 4:8] = True
    with torch.no_grad():
        assert torch.allclose(model(ids, logits_at=at).logits.view(2, 4, -1), model(ids).logits[:, 4:8], atol=1e-5)


def test_temperature_sampling_follows_the_distribution():
    logits = torch.tensor([[[0.0, 1.0, 2.0]]]).repeat(1, 20000, 1)
    g = torch.Generator().manual_seed(0)
    picks = E.add_gumbel_noise(logits, 1.0, g).argmax(-1).flatten()
    freq = torch.bincount(picks, minlength=3).double() / picks.numel()
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 0), atol=0.015)
    assert torch.equal(E.add_gumbel_noise(logits, 0.0), logits)


def test_bad_block_and_step_settings():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple of block_length"):
        E.generate(model, PROMPTS, steps=8, gen_length=12, block_length=8)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        E.generate(model, PROMPTS, steps=3, gen_length=16, block_length=8)


def test_cut_at_stop():
    assert E.cut_at_stop([5, 6, 0, 7, 0], {0}) == [5, 6]
    assert E.cut_at_stop([5, 9, 6], {0, 9}) == [5]
    assert E.cut_at_stop([5, 6], {0}) == [5, 6]


# --- the command, end to end on a tiny checkpoint ---

def test_evaluate_command_on_a_train_output_directory(tmp_path):
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
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
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
    torch.manual_seed(0)
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(tmp_path / "ckpt"), tokenizer=tok)
    args = ["evaluate.py", f"--checkpoint={tmp_path / 'ckpt'}", "--task=tiny-regex", "--limit=7", "--batch_size=2",
            "--gen_length=16", "--steps=8"]
    run_script([*args, f"--out_dir={tmp_path / 'one'}"])
    run_script([*args, f"--out_dir={tmp_path / 'two'}"], nproc=2, port=29651)
    a = [json.loads(x) for x in open(tmp_path / "one" / "tiny-regex-0shot.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "two" / "tiny-regex-0shot.jsonl")]
    assert len(a) == 7 and a == b  # rank 0 gathered every shard, in order, with the same generations


def test_chat_auto_follows_training(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    assert E.uses_chat_template("GSAI-ML/LLaDA-8B-Instruct", str(tmp_path / "nowhere"))
    assert not E.uses_chat_template(str(run), str(run / "final"))
    (run / "train_config.json").write_text(json.dumps({"chat": "true"}))
    assert E.uses_chat_template(str(run), str(run / "final"))
    (run / "train_config.json").write_text(json.dumps({"chat": "false"}))
    assert not E.uses_chat_template("my-Instruct-run", str(run / "final"))


def tiny_checkpoint(path):
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
    torch.manual_seed(0)
    M.Transformer(M.PRESETS["tiny"]).save_pretrained(str(path), tokenizer=tok)
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_records_are_kept_as_scored_and_resume_skips_them(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    args = [f"--checkpoint={ckpt}", "--task=tiny-regex", "--limit=6", "--batch_size=2", "--gen_length=16", "--steps=8"]
    # a run killed at its fourth item keeps the three scored before it
    import scoring
    real_score, calls = scoring.score, []

    def dies_at_fourth(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_score(*a, **kw)
    monkeypatch.setattr(scoring, "score", dies_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        E.main([*args, f"--out_dir={tmp_path / 'killed'}"])
    monkeypatch.setattr(scoring, "score", real_score)
    part = tmp_path / "killed" / "tiny-regex-0shot.rank0.jsonl"
    assert [r["index"] for r in read_jsonl(part)] == [0, 1, 2]

    # the full run, for reference
    run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'full'}"])
    full = read_jsonl(tmp_path / "full" / "tiny-regex-0shot.jsonl")
    # resume: the kept records stay as they are (a marked one proves it was not redone), a line cut short
    # by the kill is dropped and redone, the rest is generated and scored
    kept = read_jsonl(part)
    kept[0]["generation"] = "KEPT"
    part.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"index": 3, "prom')
    proc = run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}", "--resume", "true"])
    assert "resuming: 3 of 6 items" in proc.stdout
    resumed = read_jsonl(tmp_path / "killed" / "tiny-regex-0shot.jsonl")
    assert resumed[0]["generation"] == "KEPT" and resumed[1:] == full[1:]
    assert not part.exists()  # merged into the .jsonl
    # without --resume earlier results are not replaced silently; --overwrite starts over
    proc = run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}"], check=False)
    assert proc.returncode == 2 and "already holds results" in proc.stderr
    run_script(["evaluate.py", *args, f"--out_dir={tmp_path / 'killed'}", "--overwrite=true"])
    assert read_jsonl(tmp_path / "killed" / "tiny-regex-0shot.jsonl") == full


def test_a_diverged_checkpoint_and_an_empty_split_are_named(tmp_path):
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
    net = M.Transformer(M.PRESETS["tiny"])
    with torch.no_grad():
        net.blocks[0].attn.q_proj.weight.fill_(float("nan"))
    net.save_pretrained(str(tmp_path / "nan"), tokenizer=tok)
    proc = run_script(["evaluate.py", f"--checkpoint={tmp_path / 'nan'}", "--task=tiny-regex",
                       f"--out_dir={tmp_path / 'out'}"], check=False)
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
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
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
