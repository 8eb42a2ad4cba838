"""The text task (data.read_documents, data.pack) and the replication corpus (replication/corpus.py): packing with EOS between documents, every position maskable, the small
preset, and (on the real files) the replication corpus holding nothing of the held-out data."""

import json
import os

import pytest
from conftest import SHARED, needs_shared, run_script

from replication import corpus as C
from harness.errors import InputError
import data as D
import model as M


@pytest.fixture(scope="module")
def tok():
    return D.train_tokenizer(["the quick brown fox jumps over the lazy dog " * 20, "def f(x):\n    return x\n"])


def test_pack_joins_documents_with_eos_and_drops_nothing(tok):
    docs = ["the quick brown fox", "def f(x):\n    return x", "lazy dog " * 30]
    ids = [tok.encode(d, add_special_tokens=False) for d in docs]
    stream = ids[0] + [tok.eos_token_id] + ids[1] + [tok.eos_token_id] + ids[2] + [tok.eos_token_id]
    examples = D.pack(docs, tok, max_len=16)
    assert [t for e in examples for t in e["response_ids"]] == stream  # in order, nothing dropped
    assert all(len(e["response_ids"]) == 16 for e in examples[:-1]) and 0 < len(examples[-1]["response_ids"]) <= 16
    batch = D.collate(examples, tok.eos_token_id)
    assert batch["maskable"].all()  # no prompt: every position can be masked
    assert batch["input_ids"].shape[1] == 16  # a packed chunk gets no EOS of its own
    assert batch["input_ids"][0].tolist() == stream[:16]


def test_read_documents_from_files_folders_and_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.py").write_text("first")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "row one"}) + "\n" + json.dumps({"text": "row two"}) + "\n")
    assert D.read_documents([str(tmp_path / "d"), str(tmp_path / "rows.jsonl")], "--text_files") == ["first", "second", "row one", "row two"]
    (tmp_path / "bad.jsonl").write_text('["a list"]\n')
    with pytest.raises(Exception, match=r"bad.jsonl:1: expected a JSON object"):
        D.read_documents([str(tmp_path / "bad.jsonl")], "--text_files")
    # regression: a malformed row was a raw JSONDecodeError naming neither file nor line
    (tmp_path / "cut.jsonl").write_text(json.dumps({"text": "fine"}) + '\n{"text": "cut sh\n')
    with pytest.raises(InputError, match=r"cut.jsonl:2: malformed JSON"):
        D.read_documents([str(tmp_path / "cut.jsonl")], "--text_files")
    # a row nested past the decoder's recursion was a raw RecursionError
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(InputError, match=r"deep.jsonl:1: JSON nested too deeply"):
        D.read_documents([str(tmp_path / "deep.jsonl")], "--text_files")


def test_a_text_task_with_no_documents_is_named(tmp_path):
    # empty files (or folders of other files) gave no examples, and the run failed later with a raw error
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bin").write_bytes(b"\x00")
    proc = run_script(["train.py", "--task=text", f"--text_files={tmp_path / 'empty.txt'},{tmp_path / 'other'}",
                       "--model=tiny", "--max_steps=1", f"--out_dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 2 and "--text_files=" in proc.stderr and ": no documents" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wikitext_articles_split_at_level_one_titles():
    import tempfile
    text = " = A = \n\n text a \n = = Sub = = \n more a \n = B = \n text b \n"
    with tempfile.NamedTemporaryFile("w", suffix=".raw", delete=False) as f:
        f.write(text)
    assert C.wikitext_articles(f.name) == [" = A = \n\n text a \n = = Sub = = \n more a ", " = B = \n text b "]
    os.remove(f.name)


def test_small_preset():
    cfg = M.PRESETS["small"]
    n = sum(p.numel() for p in M.Transformer(cfg).parameters())
    assert 8e6 < n < 10e6 and cfg.arch == "llada" and (cfg.eos_token_id, cfg.mask_token_id, cfg.bos_token_id) == (0, 1, 2)
    flags = open(os.path.join(os.path.dirname(__file__), "..", "replication", "replicate.sh")).read()
    pretrain = flags[flags.index("PRETRAIN=("):flags.index(")", flags.index("PRETRAIN=("))]
    assert "--jepa_weight 0" in pretrain and "--random_context_rate true" in pretrain and "--model small" in pretrain


def test_replicate_refuses_an_arm_it_does_not_know(tmp_path):
    # ARMS=jepa,baseline (a comma) trained DLLM-JEPA under the name 'jepa,baseline': arm_flags knew no such arm
    import subprocess
    script = os.path.join(os.path.dirname(__file__), "..", "replication", "replicate.sh")
    env = dict(os.environ, DATA=str(tmp_path), RUNS=str(tmp_path / "runs"), ARMS="jepa,baseline")
    proc = subprocess.run(["bash", script, "arms"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "'jepa,baseline' is not an arm" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_text_task_trains_from_files(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(6):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"document {i}: " + "the lazy dog sleeps. " * 40)
    out = tmp_path / "run"
    proc = run_script(["train.py", "--task=text", f"--text_files={tmp_path / 'docs'}", "--model=tiny", "--max_len=64",
                       "--jepa_weight=0", "--random_context_rate=true", "--max_steps=3", "--batch_size=4",
                       "--total_batch=0", "--grad_accum=1", "--device=cpu", "--dtype=float32",
                       "--activation_checkpointing=false", f"--out_dir={out}"])
    assert "text: 6 documents" in proc.stdout and (out / "final" / "tokenizer.json").exists()
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert log[-1]["step"] == 3 and log[-1]["diffusion_loss"] > 0


@needs_shared
def test_replication_corpus_holds_no_held_out_data():
    docs = C.replication_documents(SHARED)
    text = "\n".join(docs)
    # WikiText-103 validation is the forgetting probe's data: none of its articles is in the corpus
    valid_titles = [a.split("\n")[0] for a in C.wikitext_articles(os.path.join(SHARED, "wikitext", "wikitext-103-raw",
                                                                               "wiki.valid.raw"))]
    assert len(valid_titles) == 60 and not any(t in text for t in valid_titles)
    # NL-RX is the fine-tuning task: none of its descriptions is in the corpus
    descriptions = D.read_lines(os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Synth", "src.txt"))
    assert not any(d in text for d in descriptions[:500])
    test_titles = [a.split("\n")[0] for a in C.wikitext_articles(os.path.join(SHARED, "wikitext", "wikitext-103-raw",
                                                                              "wiki.test.raw"))]
    assert len(test_titles) == 62 and all(t in text for t in test_titles)  # its " = Title = " lines
    non_empty_stdlib = sum(1 for f in C.stdlib_files() if open(f, encoding="utf-8").read().strip())
    assert len(docs) == 62 + 7473 + non_empty_stdlib  # articles, problems, modules: one document each


def test_generated_tables_are_left_out_of_the_stdlib():
    # encodings/ (codec byte maps) and pydoc_data/ (help text in one string) were 9.7% of the corpus
    files = C.stdlib_files()
    assert files and not any(f"{os.sep}encodings{os.sep}" in f or f"{os.sep}pydoc_data{os.sep}" in f for f in files)
    assert any(f.endswith(f"{os.sep}json{os.sep}decoder.py") for f in files)


def test_the_corpus_file_round_trips(tmp_path):
    docs = ["first document\nwith two lines", 'a "quoted" one', "ünïcode"]
    path = str(tmp_path / "sub" / "corpus.jsonl")
    C.write_corpus(docs, path)
    assert D.read_documents([path], "--text_files") == docs and not os.path.exists(path + ".tmp")


def test_punctuation_is_split_before_bpe():
    # without the split, BPE learns '((' and ')*(' so one bracket is spelt several ways
    texts = ["((dog)|(truck))*((a)) ((x)) )*( " * 50, "lines with words " * 50]
    plain, split = D.train_tokenizer(texts, 300), D.train_tokenizer(texts, 300, split_punctuation=True)
    assert any(len(t) > 1 and set(t) <= set("()*|") for t in plain.convert_ids_to_tokens(plain.encode("((dog))*(")))
    tokens = split.convert_ids_to_tokens(split.encode("((dog))*(x)", add_special_tokens=False))
    assert tokens == ["(", "(", "dog", ")", ")", "*", "(", "x", ")"]
    assert split.decode(split.encode("((dog)|x) lines", add_special_tokens=False)) == "((dog)|x) lines"


def test_held_out_code_is_torch_source_outside_the_corpus(tmp_path):
    import sysconfig
    files = C.held_out_code_files()
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files) and len(files) > 10 and all(f.endswith(".py") for f in files)
    assert not set(files) & set(C.stdlib_files()) and "site-packages" in files[0]
    assert not any(os.path.realpath(f).startswith(stdlib + os.sep) and "site-packages" not in f for f in files)
    out = tmp_path / "code.txt"
    C.main([f"--code_out={out}"])
    assert out.read_text() == "".join(open(f).read() for f in files)
