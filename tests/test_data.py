"""data.py on fixtures the tests write, and on the real release files in ../shared/data where present."""

import json
import os
import re

import pytest
from conftest import SHARED, needs_shared, tiny_tokenizer

import data as D


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_tiny_tokenizer_special_ids_match_tiny_preset(tok):
    import model as M
    cfg = M.PRESETS["tiny"]
    assert (tok.eos_token_id, tok.pad_token_id, tok.mask_token_id, tok.bos_token_id) == \
        (cfg.eos_token_id, cfg.eos_token_id, cfg.mask_token_id, cfg.bos_token_id)
    assert len(tok) <= cfg.vocab_size
    text = "lines containing a number, 3 times or more\n(.*([0-9]).*){3,}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_base_prompt_format_exact(tok):
    item = {"input": "lines ending with a vowel", "output": ".*([AEIOUaeiou])"}
    shot = {"input": "lines containing a number", "output": ".*([0-9]).*"}
    prompt_ids, response_ids = D.format_example("tiny-regex", item, tok, shots=[shot])
    assert prompt_ids[0] == tok.bos_token_id
    assert tok.decode(prompt_ids[1:]) == ("Convert natural language to regular expression.\n\n"
                                          "Description: lines containing a number\nRegex: .*([0-9]).*\n\n"
                                          "Description: lines ending with a vowel\nRegex:")
    assert tok.decode(response_ids) == " .*([AEIOUaeiou])"
    spider = {"input": "How many singers?", "output": "SELECT count(*) FROM singer", "db_id": "concert_singer"}
    p, _ = D.format_example("spider", spider, tok)
    assert tok.decode(p[1:]).endswith("Question: For db_id:[concert_singer]\n\nHow many singers?\nSQL:")


def test_chat_prompt_format(tok):
    import copy
    from transformers import PreTrainedTokenizerFast
    # a copy: the tiny tokenizer is shared by the whole test run (conftest.tiny_tokenizer)
    chat_tok = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(tok.backend_tokenizer), eos_token="<|endoftext|>",
                                       pad_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    chat_tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    chat_tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>{% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")
    item = {"input": "lines with a letter", "output": ".*([A-Za-z]).*"}
    shot = {"input": "lines containing a number", "output": ".*([0-9]).*"}
    prompt_ids, response_ids = D.format_example("tiny-regex", item, chat_tok, shots=[shot], chat=True)
    eot = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert chat_tok.decode(prompt_ids) == (
        "<system>Convert natural language to regular expression.<|im_end|><user>lines containing a number<|im_end|>"
        "<assistant>.*([0-9]).*<|im_end|><user>lines with a letter<|im_end|><assistant>")
    assert response_ids[-1] == eot and chat_tok.decode(response_ids[:-1]) == ".*([A-Za-z]).*"
    # a chat template reads special tokens in its rendering: an item quoting one is refused by name
    quoting = {"input": "lines with <|im_end|> in them", "output": ".*"}
    with pytest.raises(D.InputError, match="special token '<\\|im_end\\|>'.*--chat=false"):
        D.format_example("tiny-regex", quoting, chat_tok, chat=True)


def test_special_token_strings_in_data_are_text(tok):
    # '<|endoftext|>' or '<|mdm_mask|>' quoted in a document or an answer became EOS and the mask id: the
    # mask among the training targets, an EOS in the middle of a document
    quoted = f"print('{tok.eos_token}') and {tok.mask_token}"
    examples = D.pack([quoted, "second"], tok, max_len=1000)
    stream = examples[0]["response_ids"]
    assert tok.mask_token_id not in stream and stream.count(tok.eos_token_id) == 2  # after each document
    assert tok.decode(stream[:stream.index(tok.eos_token_id)]) == quoted
    prompt, response = D.format_example("tiny-regex", {"input": quoted, "output": quoted}, tok)
    assert tok.mask_token_id not in prompt + response and tok.eos_token_id not in prompt + response
    assert tok.decode(response) == " " + quoted


def test_kshot_never_contains_evaluated_item_and_is_deterministic():
    train = [{"input": f"q{i}", "output": f"a{i}"} for i in range(10)]
    first = D.choose_shots(train, 4, {"input": "x", "output": "y"})
    for item in train:  # the evaluated item also sits in the training split (as in NL-RX)
        shots = D.choose_shots(train, 4, item)
        assert len(shots) == 4 and item not in shots
        assert shots == D.choose_shots(train, 4, dict(item))
    assert D.choose_shots(train, 0, train[0]) == []
    assert D.choose_shots(train, 4, {"input": "x", "output": "y"}) == first
    with pytest.raises(ValueError, match="fewer than 4"):
        D.choose_shots(train[:4], 4, train[0])


def test_collate_masks_and_padding():
    examples = [{"prompt_ids": [7, 8, 9], "response_ids": [10, 11]},
                {"prompt_ids": [7], "response_ids": [12, 13, 14, 15, 16]}]
    b = D.collate(examples, eos_id=0)
    assert b["input_ids"].tolist() == [[7, 8, 9, 10, 11, 0, 0], [7, 12, 13, 14, 15, 16, 0]]
    assert b["maskable"].int().tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]]
    assert b["padding"].int().tolist() == [[0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0]]
    assert set(b) == {"input_ids", "maskable", "padding"}


def test_long_examples_dropped_and_counted(tok):
    items = [{"input": "lines containing a number", "output": ".*([0-9]).*"},
             {"input": "lines containing a number " * 20, "output": ".*([0-9]).*"}]
    logged = []
    out = D.tokenize_task("tiny-regex", items, tok, max_len=40, log=logged.append)
    assert len(out) == 1 and logged == ["tiny-regex: dropped 1 of 2 examples longer than max_len=40 tokens"]
    kept = out[0]
    assert len(kept["prompt_ids"]) + len(kept["response_ids"]) + 1 <= 40
    with pytest.raises(ValueError, match="all 1 examples are longer"):
        D.tokenize_task("tiny-regex", items[1:], tok, max_len=40, log=None)


@pytest.mark.parametrize("n,batch,world", [(103, 4, 1), (103, 4, 2), (100, 5, 4), (7, 2, 4), (9, 4, 8), (3, 1, 4)])
def test_rank_sharding_covers_every_example_once(n, batch, world):
    per_rank = [D.epoch_batches(n, batch, world, r, seed=5, epoch=1) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank runs the same number of steps
    assert all(len(mb) >= 1 for batches in per_rank for mb in batches)
    seen = [i for batches in per_rank for mb in batches for i in mb]
    if n >= world:
        assert sorted(seen) == list(range(n))
    else:  # fewer examples than ranks in the last step: topped up, each example at least once
        assert set(seen) == set(range(n))
    # deterministic per (seed, epoch): a resumed run recomputes the same order and skips what was done
    assert per_rank[0] == D.epoch_batches(n, batch, world, 0, seed=5, epoch=1)
    if n > 10:  # a new epoch is a new order
        assert D.epoch_batches(n, batch, world, 0, seed=5, epoch=2) != per_rank[0]


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_loaders_on_fixtures(tmp_path):
    g = tmp_path / "gsm8k"
    write(g / "train.jsonl", json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    write(g / "test.jsonl", json.dumps({"question": "2+2?", "answer": "#### 4"}) + "\n")
    assert D.load_task("gsm8k", "eval", str(g)) == [{"input": "2+2?", "output": "#### 4"}]

    n = tmp_path / "nlrx"
    write(n / "src.txt", "\n".join(f"lines {i}" for i in range(10)))
    write(n / "targ.txt", "\n".join(f"rx{i}" for i in range(10)))
    train, test = D.load_task("nlrx", "train", str(n)), D.load_task("nlrx", "eval", str(n))
    assert len(train) == 8 and len(test) == 2
    assert sorted(x["input"] for x in train + test) == sorted(f"lines {i}" for i in range(10))
    assert all(x["output"] == "rx" + x["input"].split()[1] for x in train + test)
    j = tmp_path / "nlrx_jsonl"
    msg = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "lines with dog"},
                        {"role": "assistant", "content": ".*dog.*"}]}
    write(j / "synth_test.jsonl", json.dumps(msg) + "\n")
    assert D.load_task("nlrx", "eval", str(j)) == [{"input": "lines with dog", "output": ".*dog.*"}]

    dj = tmp_path / "django"
    write(dj / "all.anno", "".join(f"  call f{i}.\n" for i in range(17010)))
    write(dj / "all.code", "".join(f"  f{i} ( )\n" for i in range(17010)))
    test = D.load_task("django", "eval", str(dj))
    assert len(test) == 10 and test[0] == {"input": "call f17000.", "output": "f17000 ( )"}
    assert len(D.load_task("django", "train", str(dj))) == 16000

    sp = tmp_path / "spider"
    write(sp / "dev.json", json.dumps([{"question": "How many?", "query": "SELECT 1", "db_id": "db"}]))
    assert D.load_task("spider", "eval", str(sp)) == [{"input": "How many?", "output": "SELECT 1", "db_id": "db"}]
    with pytest.raises(FileNotFoundError, match="train_spider.json"):
        D.load_task("spider", "train", str(sp))

    mm = tmp_path / "mmlu"
    write(mm / "test" / "anatomy_test.csv", 'question,choice0,choice1,choice2,choice3,answer\n"Q, with comma",a,b,"c\nd",e,2\n')
    assert D.load_mmlu("test", str(mm)) == [{"subject": "anatomy", "question": "Q, with comma",
                                             "choices": ["a", "b", "c\nd", "e"], "answer": 2}]
    wt = tmp_path / "wikitext"
    write(wt / "wiki.valid.raw", " \n = Title = \n \n First paragraph . \n = = Sub = = \n Second . \n")
    assert D.load_wikitext(str(wt)) == ["First paragraph .", "Second ."]


def test_bad_input_names_the_problem(tmp_path):
    g = tmp_path / "gsm8k"
    write(g / "test.jsonl", json.dumps({"question": "ok?", "answer": "#### 1"}) + "\n" +
          json.dumps({"question": "", "answer": "#### 2"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{g / 'test.jsonl'}:2: empty or missing input")):
        D.load_task("gsm8k", "eval", str(g))
    write(g / "test.jsonl", '{"question": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(ValueError, match=re.escape(f"{g / 'test.jsonl'}:2: malformed JSON")):
        D.load_task("gsm8k", "eval", str(g))
    write(g / "test.jsonl", '{"question": "a", "answer": "b"}\n\n{"question": "c", "answer": "d"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{g / 'test.jsonl'}:2: empty row")):
        D.load_task("gsm8k", "eval", str(g))
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        D.load_task("gsm8k", "train", str(g))
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        D.load_task("gsm9k", "train")
    with pytest.raises(ValueError, match="needs data_dir"):
        D.load_task("django", "train")
    n = tmp_path / "nlrx"
    write(n / "src.txt", "a\nb\nc")
    write(n / "targ.txt", "x\ny")
    with pytest.raises(ValueError, match="3 lines but .* has 2"):
        D.load_task("nlrx", "train", str(n))
    mm = tmp_path / "mmlu"
    write(mm / "test" / "x_test.csv", "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=re.escape(f"{mm / 'test' / 'x_test.csv'}:2")):
        D.load_mmlu("test", str(mm))


def test_tiny_regex_split_is_deterministic_and_disjoint():
    train, test = D.load_task("tiny-regex", "train"), D.load_task("tiny-regex", "eval")
    assert train == D.load_task("tiny-regex", "train")
    assert not {x["input"] for x in train} & {x["input"] for x in test}
    assert len(train) + len(test) == len(D.tiny_regex_pairs()) == len({d for d, _ in D.tiny_regex_pairs()})


# --- the real release files (../shared/data/README.md gives the counts) ---

@needs_shared
def test_real_gsm8k():
    d = os.path.join(SHARED, "gsm8k", "openai")
    train, test = D.load_task("gsm8k", "train", d), D.load_task("gsm8k", "eval", d)
    assert (len(train), len(test)) == (7473, 1319)
    assert all("\n#### " in x["output"] for x in train + test)


@needs_shared
@pytest.mark.parametrize("task,sub", [("nlrx", "llm_jepa"), ("nlrx", "deep_regex/NL-RX-Synth"),
                                      ("nlrx-turk", "llm_jepa"), ("nlrx-turk", "deep_regex/NL-RX-Turk")])
def test_real_nlrx(task, sub):
    d = os.path.join(SHARED, "nl_rx", sub)
    train, test = D.load_task(task, "train", d), D.load_task(task, "eval", d)
    assert (len(train), len(test)) == (8000, 2000)
    # train + test is the whole corpus as a multiset (README: verified for LLM-JEPA's split too)
    raw = os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Synth" if task == "nlrx" else "NL-RX-Turk")
    corpus = sorted(zip(D.read_lines(os.path.join(raw, "src.txt")), D.read_lines(os.path.join(raw, "targ.txt"))))
    assert sorted((x["input"], x["output"]) for x in train + test) == [(a.strip(), b.strip()) for a, b in corpus]


@needs_shared
def test_real_django():
    d = os.path.join(SHARED, "django")
    train, test = D.load_task("django", "train", d), D.load_task("django", "eval", d)
    assert (len(train), len(test)) == (16000, 1805)
    split_code = D.read_lines(os.path.join(d, "splits", "test.code"))
    assert [x["output"] for x in test] == [c.strip() for c in split_code]


@needs_shared
def test_real_spider_dev():
    d = os.path.join(SHARED, "spider", "official")
    dev = D.load_task("spider", "eval", d)
    assert len(dev) == 1034 and len({x["db_id"] for x in dev}) == 20
    gold = D.read_lines(os.path.join(d, "dev_gold.sql"))
    assert [x["output"] for x in dev] == [g.split("\t")[0].strip() for g in gold]


@needs_shared
def test_real_wikitext_and_mmlu():
    d = os.path.join(SHARED, "wikitext", "wikitext-103-raw")
    lines = D.read_lines(os.path.join(d, "wiki.valid.raw"))
    assert len(lines) == 3760 and sum(1 for ln in lines if not ln.strip()) == 1299
    headings = sum(1 for ln in lines if re.fullmatch(r" (= )+.*?( =)+ ", ln))
    assert sum(1 for ln in lines if re.fullmatch(r" = [^=].*[^=] = ", ln)) == 60  # articles
    paragraphs = D.load_wikitext(d)
    assert len(paragraphs) == 3760 - 1299 - headings
    assert paragraphs[0].startswith("Homarus gammarus , known as the European lobster")
    test, dev = D.load_mmlu("test", os.path.join(SHARED, "mmlu")), D.load_mmlu("dev", os.path.join(SHARED, "mmlu"))
    assert (len(test), len(dev), len({x["subject"] for x in test})) == (14042, 285, 57)
    counts = [sum(1 for x in test if x["answer"] == a) for a in range(4)]
    assert counts == [3222, 3462, 3582, 3776]


def test_hub_rows_are_converted(monkeypatch):
    # the hub path without a network: load_dataset's rows, as the hub serves them, through each converter
    rows = {
        ("openai/gsm8k", "main", "test"): [{"question": "1+1?", "answer": "#### 2"}],
        ("xlangai/spider", None, "validation"): [{"question": "How many?", "query": "SELECT 1", "db_id": "db"}],
        ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation"): [{"text": ""}, {"text": " = T = \n"},
                                                                      {"text": " Para . \n"}],
        ("cais/mmlu", "all", "test"): [{"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"],
                                        "answer": 3}],
    }
    asked = []

    def fake(hub_id, config, split):
        asked.append((hub_id, config, split))
        return rows[(hub_id, config, split)]

    monkeypatch.setattr(D, "hub_rows", fake)
    assert D.load_task("gsm8k", "eval") == [{"input": "1+1?", "output": "#### 2"}]
    assert D.load_task("spider", "eval") == [{"input": "How many?", "output": "SELECT 1", "db_id": "db"}]
    assert D.load_wikitext() == ["Para ."]
    assert D.load_mmlu("test") == [{"subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"],
                                    "answer": 3}]
    assert asked == list(rows)


# --- a malformed file is named, with its line ---


@pytest.mark.parametrize("content,message", [
    (b'{"question": "q", "answer": "#### 1"}\n["a", "list"]\n', r"train.jsonl:2: expected a JSON object per line"),
    (b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff\xfe"}\n', r"train.jsonl:2: not UTF-8 text"),
    (b'{"question": "q", "answer": "#### 1"}\n{"question": \n', r"train.jsonl:2: malformed JSON"),
])
def test_malformed_data_files_are_named(tmp_path, content, message):
    from harness.errors import InputError
    (tmp_path / "train.jsonl").write_bytes(content)
    with pytest.raises(InputError, match=message):
        D.load_task("gsm8k", "train", str(tmp_path))


def test_malformed_spider_and_run_config_files_are_named(tmp_path):
    """Regression: Spider's dev.json went through json.load (a raw traceback) and a malformed
    train_config.json was reported without its line."""
    from harness.errors import InputError
    from harness import run_folder
    (tmp_path / "dev.json").write_text('[{"question": "q",\n "query": }]')
    with pytest.raises(InputError, match=r"dev.json:2: malformed JSON"):
        D.load_task("spider", "eval", str(tmp_path))
    (tmp_path / "dev.json").write_text('{"question": "q", "query": "SELECT 1"}')  # an object, not a list
    with pytest.raises(InputError, match=r"dev.json: expected a JSON list of question objects"):
        D.load_task("spider", "eval", str(tmp_path))
    (tmp_path / "train_config.json").write_text('{"t_low": 0.2,\n"t_high": }')
    with pytest.raises(InputError, match=r"train_config.json:2: malformed JSON"):
        run_folder.run_config(str(tmp_path))


def test_empty_and_too_long_splits_say_which():
    from harness.errors import InputError
    tok = tiny_tokenizer()
    with pytest.raises(InputError, match="the training split is empty"):
        D.tokenize_task("tiny-regex", [], tok, 128)
    with pytest.raises(InputError, match="all 3 examples are longer than max_len=4"):
        D.tokenize_task("tiny-regex", D.load_task("tiny-regex", "train")[:3], tok, 4)


def test_a_short_django_file_is_named(tmp_path):
    # a Django file shorter than the standard split was an IndexError
    from harness.errors import InputError
    (tmp_path / "all.anno").write_text("call f.\n" * 20)
    (tmp_path / "all.code").write_text("f()\n" * 20)
    with pytest.raises(InputError, match=r"all.anno has 20 lines; Django's standard split"):
        D.load_task("django", "train", str(tmp_path))
