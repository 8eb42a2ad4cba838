"""evaluate.py: the sampler on a tiny model, the scorers on crafted cases, and the scorers on the real
release files in ../shared/data where present."""

import json
import os
import sqlite3
import time
from dataclasses import replace
from fractions import Fraction

import pytest
import torch
from conftest import SHARED, needs_shared, run_script

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


# --- GSM8K ---

@pytest.mark.parametrize("text,expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7),
    ("#### 1,234", 1234),
    ("The answer is $18.", 18),
    ("so the total is 5 and then 12.50 dollars.", Fraction("12.5")),
    ("#### -3\nQuestion: 99", -3),
    ("The answer is: 0.5", Fraction(1, 2)),
    ("no number here", None),
])
def test_gsm8k_extraction(text, expected):
    assert E.extract_gsm8k_answer(text) == expected


def test_gsm8k_scoring():
    item = {"output": "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"}
    assert E.score_gsm8k("48 + 24 = 72\n#### 72", item)["accuracy"] == 1.0
    assert E.score_gsm8k("The answer is 72.00", item)["accuracy"] == 1.0
    assert E.score_gsm8k("#### 71", item)["accuracy"] == 0.0


# --- NL-RX regexes ---

@pytest.mark.parametrize("a,b,same", [
    (".*(dog).*", ".*dog.*", True),
    ("(a|b)*", "(a*b*)*", True),
    ("([0-9])+", "[0-9][0-9]*", True),
    ("(dog){2,}", "dogdog(dog)*", True),
    ("~(dog)(.*)", "(~(dog))(.*)", True),  # prefix ~ binds tighter than concatenation
    ("~(.*dog.*)", "~(.*(dog).*)", True),
    ("[AEIOUaeiou]", "[aeiouAEIOU]", True),
    ("(.*[A-Z].*)&(.*[0-9].*)", "(.*[A-Z].*[0-9].*)|(.*[0-9].*[A-Z].*)", True),
    ("\\b(dog)\\b", "b(dog)b", True),  # '\b' is the letter b, as in dk.brics
    (".*(dog).*", ".*(dog)", False),
    ("[a-z]", "[A-Z]", False),
    ("(dog){3}", "(dog){3,}", False),
    ("~(a)", "a", False),
])
def test_regex_equivalence(a, b, same):
    assert E.equivalent(E.parse_regex(a), E.parse_regex(b)) is same
    scores = E.score_regex(a, {"output": b})
    assert scores["dfa"] == float(same)
    if same:
        assert scores["functional"] == 1.0


def test_regex_matching_whole_line():
    classes = lambda r: {ch: rep for rep, ms in E.char_classes(r).items() for ch in ms}  # noqa: E731
    r = E.parse_regex("(.*[0-9].*){3,}")
    assert E.matches(r, "a1b2c3", classes(r)) and not E.matches(r, "a1b2", classes(r))
    r = E.parse_regex("dog")
    assert E.matches(r, "dog", classes(r)) and not E.matches(r, "dogs", classes(r))
    r = E.parse_regex("~(.*dog.*)")
    assert E.matches(r, "cat", classes(r)) and not E.matches(r, "hotdogs", classes(r))


def test_functional_match_catches_a_difference_the_samples_can_see():
    scores = E.score_regex(".*(dog).*", {"output": ".*([0-9]).*"})
    assert scores == {"exact": 0.0, "functional": 0.0, "dfa": 0.0}
    scores = E.score_regex("garbage((", {"output": ".*dog.*"})
    assert scores == {"exact": 0.0, "functional": 0.0, "dfa": 0.0}


def test_sampled_strings_match_the_gold():
    gold = E.parse_regex("(.*(dog).*)&(([A-Z]).*)")
    strings = E.sample_strings(gold, 50, 50, seed=1)
    classes = {ch: rep for rep, ms in E.char_classes(gold).items() for ch in ms}
    assert len(strings) == 100
    assert all(E.matches(gold, s, classes) for s in strings[:50])
    assert strings == E.sample_strings(gold, 50, 50, seed=1)


@pytest.mark.parametrize("evil", ["(a*)*b", "((a|a)*)*c", "(.*.*.*.*.*.*.*.*)*x", "(a|aa)*(a|aa)*(a|aa)*b"])
def test_adversarial_regex_does_not_hang(evil):
    t = time.monotonic()
    r = E.parse_regex(evil)
    classes = {ch: rep for rep, ms in E.char_classes(r).items() for ch in ms}
    assert not E.matches(r, "a" * 5000 + "!", classes)
    E.score_regex(evil, {"output": ".*(dog).*"})
    assert time.monotonic() - t < 20


def test_regex_blowup_is_bounded(monkeypatch):
    monkeypatch.setattr(E, "MAX_STATES", 50)
    r = E.parse_regex("(.*a.{8})")  # the classic exponential DFA: 'a' nine from the end
    with pytest.raises(E.RegexError, match="too large"):
        E.explore(r, list(E.char_classes(r)), time.monotonic() + 10)
    assert E.score_regex("(.*a.{8})", {"output": "(.*a.{8})"})["exact"] == 1.0  # scored, the run goes on


@pytest.mark.parametrize("bad", ["(dog", "dog)", "[a-", "a{3", "a{99}", "*a", "a|*"])
def test_regex_parse_errors(bad):
    with pytest.raises(E.RegexError):
        E.parse_regex(bad)


# --- Spider ---

@pytest.fixture()
def db_dir(tmp_path):
    path = tmp_path / "db" / "shop"
    path.mkdir(parents=True)
    conn = sqlite3.connect(path / "shop.sqlite")
    conn.executescript("CREATE TABLE item (id INTEGER, name TEXT, price REAL);"
                       "INSERT INTO item VALUES (1, 'pen', 1.5), (2, 'ink', 3.0), (3, 'pad', 2.0);")
    conn.commit()
    conn.close()
    return str(tmp_path / "db")


def test_spider_scores(db_dir):
    item = {"output": "SELECT name FROM item WHERE price > 1.8", "db_id": "shop"}
    assert E.score_spider("SELECT name FROM item WHERE price > 1.8;", item, db_dir) == {"exact": 1.0, "exec": 1.0}
    # cut at the first ';', normalised exact match, execution match as a multiset
    assert E.score_spider("select name from item where price>1.8; garbage", item, db_dir) == {"exact": 1.0, "exec": 1.0}
    assert E.score_spider("SELECT name FROM item WHERE price >= 2", item, db_dir) == {"exact": 0.0, "exec": 1.0}
    assert E.score_spider("SELECT name FROM item", item, db_dir)["exec"] == 0.0
    assert E.score_spider("SELEC nonsense", item, db_dir)["exec"] == 0.0  # fails to parse: 0, no exception
    ordered = {"output": "SELECT name FROM item ORDER BY price", "db_id": "shop"}
    assert E.score_spider("SELECT name FROM item ORDER BY price DESC", ordered, db_dir)["exec"] == 0.0
    assert E.score_spider("SELECT name FROM item", {"output": "SELECT 1", "db_id": "absent"}, db_dir)["exec"] is None
    broken_gold = E.score_spider("SELECT name FROM item", {"output": "SELECT nope FROM item", "db_id": "shop"}, db_dir)
    assert broken_gold["exec"] is None and "nope" in broken_gold["gold_error"]
    summary = E.summarize([{"scores": broken_gold}, {"scores": {"exact": 1.0, "exec": 1.0}}])
    assert summary == {"n": 2, "exact": 0.5, "exec": 1.0, "exec_n": 1, "gold_errors": 1}


def test_spider_never_writes(db_dir):
    path = os.path.join(db_dir, "shop", "shop.sqlite")
    before = open(path, "rb").read()
    item = {"output": "SELECT count(*) FROM item", "db_id": "shop"}
    for sql in ["DELETE FROM item", "DROP TABLE item", "INSERT INTO item VALUES (4, 'x', 1)",
                "UPDATE item SET price = 0", f"ATTACH DATABASE '{db_dir}/evil.sqlite' AS evil",
                "CREATE TABLE t (x)", "PRAGMA journal_mode=DELETE"]:
        assert E.score_spider(sql, item, db_dir)["exec"] == 0.0
    assert open(path, "rb").read() == before
    assert not os.path.exists(os.path.join(db_dir, "evil.sqlite"))


def test_spider_query_that_runs_forever_times_out(db_dir):
    item = {"output": "SELECT count(*) FROM item", "db_id": "shop"}
    forever = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r")
    t = time.monotonic()
    assert E.score_spider(forever, item, db_dir, timeout=1.0)["exec"] == 0.0
    assert time.monotonic() - t < 10


# --- Django ---

def test_django_decomposition():
    item = {"output": "from django . conf import settings"}
    assert E.score_django("from django . conf import settings", item) == \
        {"exact": 1.0, "ws_prefix": 1.0, "category": "exact"}
    assert E.score_django("from  django . conf import settings\nimport os", item) == \
        {"exact": 0.0, "ws_prefix": 1.0, "category": "stopping_artifact"}
    assert E.score_django("from django import settings", item) == \
        {"exact": 0.0, "ws_prefix": 0.0, "category": "content_error"}
    summary = E.summarize([{"scores": E.score_django(p, item)} for p in
                           ["from django . conf import settings", "x", "from django . conf import settings !"]])
    assert summary["exact"] == pytest.approx(1 / 3) and summary["category/content_error"] == pytest.approx(1 / 3)


# --- the command, end to end on a tiny checkpoint ---

def test_evaluate_command_on_a_train_output_directory(tmp_path):
    tok = D.train_tiny_tokenizer(D.tiny_tokenizer_texts())
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    window = 96  # a context window some 4-shot prompts + 16 generated tokens overrun: counted, not fatal
    M.Transformer(replace(M.PRESETS["tiny"], max_seq_len=window)).save_pretrained(str(run_dir / "final"), tokenizer=tok)
    proc = run_script(["evaluate.py", f"--checkpoint={run_dir}", "--task", "tiny-regex", "--limit=6", "--batch_size=4",
                       "--shots=4", "--gen_length=16", "--steps=8"])
    summary = json.load(open(run_dir / "final" / "tiny-regex-4shot.json"))
    assert summary["n"] == 6 and set(summary) >= {"exact", "functional", "dfa"}
    rows = [json.loads(line) for line in open(run_dir / "final" / "tiny-regex-4shot.jsonl")]
    assert [r["index"] for r in rows] == list(range(6))
    assert all(r["prompt"].count("Regex:") == 5 for r in rows)  # 4 shots + the item
    items, train_items = D.load_task("tiny-regex", "eval")[:6], D.load_task("tiny-regex", "train")
    lengths = [len(D.format_example("tiny-regex", x, tok, D.choose_shots(train_items, 4, x))[0]) for x in items]
    assert [r["prompt_tokens"] for r in rows] == lengths
    over = sum(n + 16 > window for n in lengths)
    assert 0 < over and summary["over_context_window"] == over
    assert f"{over} of 6 prompts" in proc.stdout


# --- the real release files: every gold answer scores 1 on every metric ---

@needs_shared
def test_real_gsm8k_gold_scores_one():
    items = D.load_task("gsm8k", "eval", os.path.join(SHARED, "gsm8k", "openai"))
    assert len(items) == 1319 and all(E.score_gsm8k(x["output"], x)["accuracy"] == 1.0 for x in items)


@needs_shared
def test_real_django_gold_scores_one():
    items = D.load_task("django", "eval", os.path.join(SHARED, "django"))
    assert all(E.score_django(x["output"], x) == {"exact": 1.0, "ws_prefix": 1.0, "category": "exact"} for x in items)


@needs_shared
def test_real_spider_gold_scores_one():
    items = D.load_task("spider", "eval", os.path.join(SHARED, "spider", "official"))
    db_dir = os.path.join(SHARED, "spider", "database")
    present = [x for x in items if os.path.exists(os.path.join(db_dir, x["db_id"], x["db_id"] + ".sqlite"))]
    assert len(present) == 972  # ../shared/data/README.md: 972 of 1,034 dev questions are executable
    for x in present:
        assert E.score_spider(x["output"], x, db_dir) == {"exact": 1.0, "exec": 1.0}, x["output"]


@needs_shared
def test_real_nlrx_gold_scores_one():
    # the scores depend on the gold string alone, so each distinct regex of the corpus is scored once
    # (NL-RX-Synth and NL-RX-Turk share their 10,000 regexes)
    regexes = set(D.read_lines(os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Synth", "targ.txt")))
    regexes |= set(D.read_lines(os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Turk", "targ.txt")))
    for gold in sorted(regexes):
        assert E.score_regex(gold, {"output": gold}) == {"exact": 1.0, "functional": 1.0, "dfa": 1.0}, gold


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
