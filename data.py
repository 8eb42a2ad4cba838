"""
The paper's tasks as token batches: sources (local release files or the hub), prompts, tokenisation,
and the per-rank batch order for torchrun.

Fine-tuning and evaluation tasks: gsm8k, nlrx (NL-RX-SYNTH), nlrx-turk, spider, django, and tiny-regex
(an offline NL-RX-style generator for the tiny preset and the tests). Probe data: wikitext, mmlu.

Splits (the only place they are named; train = fine-tuning, eval = scoring):
  gsm8k       train.jsonl (7,473) / test.jsonl (1,319)                    hub openai/gsm8k (main)
  nlrx        the LLM-JEPA split (synth_train.jsonl 8,000 / synth_test.jsonl 2,000), the split the paper's
              numbers are comparable with, when data_dir holds those files; from the raw release
              (src.txt / targ.txt, 10,000 pairs) a seeded random 8,000 / 2,000 split of the same sizes
              (not the same partition: that one is only published as LLM-JEPA's files)
  nlrx-turk   as nlrx with the Turk paraphrases (turk_*.jsonl, or NL-RX-Turk/src.txt + targ.txt)
  spider      train_spider.json (7,000) / dev.json (1,034, the paper's "validation split")
                                                                          hub xlangai/spider (train / validation)
  django      all.anno / all.code lines 1-16000 / 17001-18805 (the standard 16000/1000/1805 split;
              the 1,000 dev lines are not used)
  tiny-regex  generated: 90% / 10% of the enumerated pairs, seed 0
  wikitext    wiki.valid.raw (WikiText-103 validation)                    hub Salesforce/wikitext (wikitext-103-raw-v1)
  mmlu        test/*.csv (14,042) and dev/*.csv (285)                     hub cais/mmlu (all)
"""

import csv
from collections.abc import Mapping
import glob
import os
import random

import torch

from harness.errors import InputError, MissingInput, parse_json, read_text

# -----------------------------------------------------------------------------
# tasks

TASKS = {
    # instruction: the first line of a base-model prompt and the system message of a chat prompt
    # (LLM-JEPA's system prompts where it has one); labels frame each question/answer pair.
    "gsm8k": dict(instruction="Answer the math question, show steps.", input_label="Question",
                  output_label="Answer", hub=("openai/gsm8k", "main"), gen_length=256),
    "nlrx": dict(instruction="Convert natural language to regular expression.", input_label="Description",
                 output_label="Regex", hub=None, gen_length=512),
    "nlrx-turk": dict(instruction="Convert natural language to regular expression.", input_label="Description",
                      output_label="Regex", hub=None, gen_length=512),
    "spider": dict(instruction="Convert natural language to SQL.", input_label="Question", output_label="SQL",
                   hub=("xlangai/spider", None), gen_length=512),
    "django": dict(instruction="Convert pseudo-code to Python.", input_label="Pseudo-code", output_label="Python",
                   hub=None, gen_length=512),
    "tiny-regex": dict(instruction="Convert natural language to regular expression.", input_label="Description",
                       output_label="Regex", hub=None, gen_length=16),  # answers are at most 12 tokens
}
SPLIT_SEED = 0  # the seeded splits (NL-RX from raw files, tiny-regex)
SHOT_SEED = 1234  # k-shot exemplars
NLRX_TRAIN_SIZE = 8000
DJANGO_TRAIN, DJANGO_DEV = 16000, 1000
WHERE_TO_GET = {
    "nlrx": "github.com/nicholaslocascio/deep-regex (datasets/NL-RX-Synth/{src,targ}.txt), or LLM-JEPA's "
            "datasets/synth_{train,test}.jsonl (github.com/rbalestr-lab/llm-jepa)",
    "nlrx-turk": "github.com/nicholaslocascio/deep-regex (datasets/NL-RX-Turk/{src,targ}.txt), or LLM-JEPA's "
                 "datasets/turk_{train,test}.jsonl",
    "django": "github.com/odashi/ase15-django-dataset (django/all.anno, django/all.code)",
}


def read_lines(path):
    text = read_text(path, "data file")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def read_jsonl(path):
    rows = []
    for i, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            raise InputError(f"{path}:{i}: empty row")
        row = parse_json(line, path, i)
        if not isinstance(row, dict):
            raise InputError(f"{path}:{i}: expected a JSON object per line, got a {type(row).__name__}")
        rows.append(row)
    return rows


def example(input_text, output_text, where, **meta):
    """One task item: input (question / description / pseudo-code), output (gold answer) and metadata.
    An empty field is an error naming the file and line."""
    if not isinstance(input_text, str) or not input_text.strip():
        raise InputError(f"{where}: empty or missing input")
    if not isinstance(output_text, str) or not output_text.strip():
        raise InputError(f"{where}: empty or missing output")
    return {"input": input_text.strip(), "output": output_text.strip(), **meta}


def messages_example(row, where):
    """LLM-JEPA's chat rows: system, user, assistant."""
    try:
        by_role = {m["role"]: m["content"] for m in row["messages"]}
        return example(by_role["user"], by_role["assistant"], where)
    except (KeyError, TypeError):
        raise InputError(f"{where}: expected {{'messages': [system, user, assistant]}}") from None


def hub_rows(hub_id, config, split):
    from datasets import load_dataset
    return load_dataset(hub_id, config, split=split)


def holdout_split(items, n, split):
    """A validation split carved from a training split: n items drawn with SPLIT_SEED are 'val', the rest
    'train' (in their order). For choosing hyper-parameters without touching the evaluation split."""
    if not 0 < n < len(items):
        raise InputError(f"cannot hold out {n} of {len(items)} training items")
    chosen = set(random.Random(SPLIT_SEED).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if (i in chosen) == (split == "val")]


def load_task(task, split, data_dir=None):
    """Items of a task's split ('train' or 'eval') as dicts with 'input', 'output' (and 'db_id' for spider):
    from data_dir in the release's own layout, or where data_dir is None from the hub (gsm8k, spider)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if task == "tiny-regex":
        return tiny_regex(split)
    if data_dir is None and TASKS[task]["hub"] is None:
        raise InputError(f"task {task} needs data_dir pointing at the release files: {WHERE_TO_GET[task]}")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise MissingInput(f"data_dir {data_dir} does not exist")
    loader = {"gsm8k": load_gsm8k, "nlrx": load_nlrx, "nlrx-turk": load_nlrx, "django": load_django,
              "spider": load_spider}[task]
    return loader(task, split, data_dir)


def load_gsm8k(task, split, data_dir):
    """GSM8K's train (7,473) or test (1,319) split: openai/gsm8k's {train,test}.jsonl, or the hub's 'main'."""
    if data_dir is None:
        rows = hub_rows("openai/gsm8k", "main", "train" if split == "train" else "test")
        return [example(r["question"], r["answer"], f"openai/gsm8k row {i}") for i, r in enumerate(rows)]
    path = os.path.join(data_dir, "train.jsonl" if split == "train" else "test.jsonl")
    return [example(r.get("question"), r.get("answer"), f"{path}:{i}") for i, r in enumerate(read_jsonl(path), start=1)]


def load_nlrx(task, split, data_dir):
    """NL-RX (SYNTH for 'nlrx', TURK for 'nlrx-turk'): LLM-JEPA's {synth,turk}_{train,test}.jsonl where present
    (the split the paper compares with), else a seeded 8,000 / 2,000 split of the raw src.txt / targ.txt."""
    variant = "synth" if task == "nlrx" else "turk"
    jsonl = os.path.join(data_dir, f"{variant}_{'train' if split == 'train' else 'test'}.jsonl")
    if os.path.exists(jsonl):
        return [messages_example(r, f"{jsonl}:{i}") for i, r in enumerate(read_jsonl(jsonl), start=1)]
    src, targ = os.path.join(data_dir, "src.txt"), os.path.join(data_dir, "targ.txt")
    if not os.path.exists(src):
        raise MissingInput(f"{data_dir} has neither {os.path.basename(jsonl)} nor src.txt/targ.txt "
                           f"({WHERE_TO_GET[task]})")
    nl, rx = read_lines(src), read_lines(targ)
    if len(nl) != len(rx):
        raise InputError(f"{src} has {len(nl)} lines but {targ} has {len(rx)}")
    items = [example(a, b, f"{src}:{i}") for i, (a, b) in enumerate(zip(nl, rx), start=1)]
    order = list(range(len(items)))
    random.Random(SPLIT_SEED).shuffle(order)
    train_size = min(NLRX_TRAIN_SIZE, int(0.8 * len(items)))
    chosen = order[:train_size] if split == "train" else order[train_size:]
    return [items[i] for i in sorted(chosen)]


def load_django(task, split, data_dir):
    """Django's standard split of all.anno / all.code: lines 1-16000 train, 17001 to the end test."""
    anno_path, code_path = os.path.join(data_dir, "all.anno"), os.path.join(data_dir, "all.code")
    anno, code = read_lines(anno_path), read_lines(code_path)
    if len(anno) != len(code):
        raise InputError(f"{anno_path} has {len(anno)} lines but {code_path} has {len(code)}")
    if len(anno) <= DJANGO_TRAIN + DJANGO_DEV:
        raise InputError(f"{anno_path} has {len(anno):,} lines; Django's standard split (16,000 train, 1,000 dev, "
                         f"the rest test) needs more: is it the release's whole all.anno?")
    # One line of pseudo-code cannot tell its indentation: both sides are stripped.
    lo, hi = (0, DJANGO_TRAIN) if split == "train" else (DJANGO_TRAIN + DJANGO_DEV, len(anno))
    return [example(anno[i], code[i], f"{anno_path}:{i + 1}") for i in range(lo, hi)]


def load_spider(task, split, data_dir):
    """Spider's train_spider.json (7,000) or dev.json (1,034, the paper's validation split), or the hub's
    xlangai/spider; each item keeps its db_id."""
    if data_dir is None:
        rows = hub_rows("xlangai/spider", None, "train" if split == "train" else "validation")
        return [example(r["question"], r["query"], f"xlangai/spider row {i}", db_id=r["db_id"])
                for i, r in enumerate(rows)]
    path = os.path.join(data_dir, "train_spider.json" if split == "train" else "dev.json")
    if not os.path.exists(path):
        raise MissingInput(f"missing data file {path} (Spider's official release layout)")
    rows = parse_json(read_text(path, "Spider file"), path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: expected a JSON list of question objects (Spider's release layout)")
    return [example(r.get("question"), r.get("query"), f"{path} item {i}", db_id=r.get("db_id"))
            for i, r in enumerate(rows)]


# -----------------------------------------------------------------------------
# probe data


def load_wikitext(data_dir=None):
    """WikiText-103 validation paragraphs: non-blank lines that are not ' = Heading = ' lines."""
    if data_dir is None:
        lines = [r["text"] for r in hub_rows("Salesforce/wikitext", "wikitext-103-raw-v1", "validation")]
    else:
        lines = read_lines(os.path.join(data_dir, "wiki.valid.raw"))
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("=")]


def load_mmlu(split="test", data_dir=None):
    """MMLU questions as dicts: subject, question, choices (4), answer (0-3). Local files are the HF
    cais/mmlu layout written as CSV (header question,choice0..3,answer; one file per subject)."""
    if data_dir is None:
        rows = hub_rows("cais/mmlu", "all", split)
        return [{"subject": r["subject"], "question": r["question"], "choices": list(r["choices"]),
                 "answer": int(r["answer"])} for r in rows]
    files = sorted(glob.glob(os.path.join(data_dir, split, f"*_{split}.csv")))
    if not files:
        raise MissingInput(f"no {split}/*_{split}.csv files under {data_dir}")
    out = []
    for path in files:
        subject = os.path.basename(path)[: -len(f"_{split}.csv")]
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for i, r in enumerate(reader, start=2):
                try:
                    choices = [r[f"choice{j}"] for j in range(4)]
                    answer = int(r["answer"])
                except (KeyError, TypeError, ValueError):
                    raise InputError(f"{path}:{i}: expected question,choice0..3,answer with answer in 0-3") from None
                if not r["question"] or answer not in range(4):
                    raise InputError(f"{path}:{i}: empty question or answer outside 0-3")
                out.append({"subject": subject, "question": r["question"], "choices": choices, "answer": answer})
    return out


# -----------------------------------------------------------------------------
# the offline task: NL-RX-style descriptions and regexes, in NL-RX's own syntax

REGEX_ATOMS = [("the string 'dog'", "dog"), ("the string 'truck'", "truck"), ("the string 'ring'", "ring"),
               ("the string 'lake'", "lake"), ("a number", "[0-9]"), ("a vowel", "[AEIOUaeiou]"),
               ("a capital letter", "[A-Z]"), ("a lower-case letter", "[a-z]"), ("a letter", "[A-Za-z]"),
               ("a character", ".")]


def tiny_regex_pairs():
    """Every (description, regex) pair the generator knows, in a fixed order."""
    pairs = []
    for d, r in REGEX_ATOMS:
        pairs += [(f"lines containing {d}", f".*({r}).*"), (f"lines starting with {d}", f"({r}).*"),
                  (f"lines ending with {d}", f".*({r})"), (f"lines not containing {d}", f"~(.*({r}).*)"),
                  (f"lines not starting with {d}", f"~(({r}).*)"), (f"lines with {d}, zero or more times", f"({r})*")]
        pairs += [(f"lines containing {d}, {n} times or more", f"(.*({r}).*){{{n},}}") for n in range(2, 6)]
        for d2, r2 in REGEX_ATOMS:
            if r2 == r:
                continue
            pairs += [(f"lines with {d} before {d2}", f".*({r}).*({r2}).*"),
                      (f"lines containing {d} or {d2}", f".*(({r})|({r2})).*"),
                      (f"lines containing {d} and {d2}", f"(.*({r}).*)&(.*({r2}).*)"),
                      (f"lines starting with {d} and ending with {d2}", f"({r}).*({r2})"),
                      (f"lines with {d} followed by {d2}", f".*({r})({r2}).*")]
    return pairs


def tiny_regex(split):
    pairs = tiny_regex_pairs()
    order = list(range(len(pairs)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = len(pairs) // 10
    chosen = order[n_eval:] if split == "train" else order[:n_eval]
    return [example(pairs[i][0], pairs[i][1], f"tiny-regex pair {i}") for i in chosen]


PUNCTUATION = r"[!-/:-@\[-`{-~]"  # the 32 ASCII punctuation characters, one pre-token each


def train_tokenizer(texts, vocab_size=512, split_punctuation=False):
    """A byte-level BPE tokenizer trained on texts (the offline task for the tiny preset, the corpus for
    the text task), wrapped as PreTrainedTokenizerFast with the special tokens of the random-init presets
    (model.PRESETS 'tiny' and 'small'): 0 EOS = PAD, 1 mask, 2 BOS. Small and 8B runs then share one
    tokenizer API and one checkpoint format.

    split_punctuation: every ASCII punctuation character is its own pre-token before BPE, so `(`, `)`,
    `|`, `*`, `{`, `\\` are always one token each, whatever their neighbours. Without it the BPE learns
    tokens like `((`, `)*(` and `}\\`, so one bracket is spelt several ways and a regex splits at about
    1.4 characters per token with its syntax smeared across tokens (measured on NL-RX's regexes)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|mdm_mask|>", "<|startoftext|>"]
    tk = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_punctuation:
        isolate = pre_tokenizers.Split(Regex(PUNCTUATION), behavior="isolated")
        tk.pre_tokenizer = pre_tokenizers.Sequence([isolate, byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=specials[0], pad_token=specials[0],
                                   mask_token=specials[1], bos_token=specials[2])


def tiny_tokenizer_texts():
    """What the tiny tokenizer is trained on: every prompt and answer the offline task can produce."""
    spec = TASKS["tiny-regex"]
    texts = [spec["instruction"]]
    for d, r in tiny_regex_pairs():
        texts.append(f"{spec['input_label']}: {d}\n{spec['output_label']}: {r}\n\n")
    return texts


# -----------------------------------------------------------------------------
# the text task: plain text for pretraining a diffusion LM with LLaDA's own objective (every position
# maskable, one masking rate t ~ U(0, 1] per sequence, no JEPA term)
#   --text_files a.txt,dir/,c.jsonl --read_documents--> documents (a file is one; a .jsonl row's "text" is one)
#   documents --train_tokenizer--> tokenizer (random-init presets)
#   documents --pack--> doc1 EOS doc2 EOS ... cut into max_len-token examples; the last one keeps the
#                       remainder (shorter, padded by collate); nothing is dropped

TEXT_SUFFIXES = (".txt", ".md", ".py", ".raw", ".rst")


def read_documents(paths, flag):
    """The documents of files and folders (folders: every text file below, sorted). A text file is one
    document; a .jsonl file gives one per row (its "text" field). None at all (empty files, folders of other
    files) is an InputError naming the flag the paths came from."""
    documents = read_each(paths)
    if not documents:
        raise InputError(f"{flag}={','.join(paths)}: no documents (empty files, or folders with no "
                         f"{'/'.join(TEXT_SUFFIXES + ('.jsonl',))} file)")
    return documents


def read_each(paths):
    """read_documents without the check: [] when there is nothing."""
    documents = []
    for path in paths:
        if os.path.isdir(path):
            files = sorted(os.path.join(root, f) for root, dirs, names in os.walk(path) for f in names
                           if f.endswith(TEXT_SUFFIXES + (".jsonl",)))
            documents += read_each(files)
        elif path.endswith(".jsonl"):
            for i, line in enumerate(read_text(path, "text file").splitlines(), start=1):
                row = parse_json(line, path, i) if line.strip() else None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise InputError(f"{path}:{i}: expected a JSON object with a \"text\" field")
                documents.append(row["text"])
        else:
            documents.append(read_text(path, "text file"))
    return [d for d in documents if d.strip()]


def pack(documents, tokenizer, max_len):
    """Training examples of at most max_len tokens: the documents' ids joined with EOS after each, cut into
    consecutive chunks; the last chunk keeps the remainder. Every token is maskable (no prompt)."""
    eos = tokenizer.eos_token_id
    stream = []
    for text in documents:
        stream += encode_text(tokenizer, text) + [eos]
    return [{"prompt_ids": [], "response_ids": stream[i:i + max_len], "packed": True}
            for i in range(0, len(stream), max_len)]


# -----------------------------------------------------------------------------
# prompts and tokenisation


def uses_chat(setting, name, run_config=None):
    """Whether prompts use the chat template: --chat true / false, or with 'auto' what the train.py run that
    made the checkpoint used (its train_config.json, when there is one), else whether the model's name says
    Instruct (LLaDA-8B-Instruct, Dream-v0-Instruct-7B, iLLaDA-8B-Instruct) or is LLaDA 1.5."""
    if setting != "auto":
        return setting == "true"
    if run_config:
        return run_config.get("chat") == "true"
    return "instruct" in name.lower() or "llada-1.5" in name.lower()  # LLaDA 1.5: LLaDA-8B-Instruct, aligned


def choose_shots(train_items, k, item, seed=SHOT_SEED):
    """k exemplars drawn deterministically from the training split, never equal to the evaluated item
    (NL-RX has pairs that occur in both splits)."""
    if k == 0:
        return []
    order = list(range(len(train_items)))
    random.Random(seed).shuffle(order)
    shots = []
    for i in order:
        cand = train_items[i]
        if (cand["input"], cand["output"]) != (item["input"], item["output"]):
            shots.append(cand)
            if len(shots) == k:
                return shots
    raise InputError(f"the training split has fewer than {k} exemplars distinct from the item")


def item_input(task, item):
    # Spider names its database the way LLM-JEPA's prompts do
    return f"For db_id:[{item['db_id']}]\n\n{item['input']}" if task == "spider" else item["input"]


def end_of_turn_id(tokenizer):
    for token in ("<|eot_id|>", "<|im_end|>"):  # LLaDA-Instruct, Dream-Instruct (their tokenizer_config.json)
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            return tid
    raise InputError("chat prompts need an end-of-turn token (<|eot_id|> or <|im_end|>) in the tokenizer")


def format_example(task, item, tokenizer, shots=(), chat=False):
    """(prompt ids, response ids) for one item. Base models: instruction, the shots and the question as
    plain 'Label: text' lines (encode_plain). Instruct models: the tokenizer's chat template, one
    user/assistant turn per shot, and the response closed by the end-of-turn token. The trailing EOS is
    added by collate."""
    spec = TASKS[task]
    if chat:
        messages = [{"role": "system", "content": spec["instruction"]}]
        for s in shots:
            messages += [{"role": "user", "content": item_input(task, s)}, {"role": "assistant", "content": s["output"]}]
        messages.append({"role": "user", "content": item_input(task, item)})
        refuse_special_strings(tokenizer, [m["content"] for m in messages] + [item["output"]])
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, Mapping):  # a BatchEncoding, in some transformers versions
            prompt_ids = prompt_ids["input_ids"]
        response_ids = encode_text(tokenizer, item["output"]) + [end_of_turn_id(tokenizer)]
        return list(prompt_ids), response_ids
    text = spec["instruction"] + "\n\n"
    for s in shots:
        text += f"{spec['input_label']}: {item_input(task, s)}\n{spec['output_label']}: {s['output']}\n\n"
    text += f"{spec['input_label']}: {item_input(task, item)}\n{spec['output_label']}:"
    return encode_plain(tokenizer, text), encode_text(tokenizer, " " + item["output"])


def encode_plain(tokenizer, text):
    """A base model's text as token ids, BOS first where the tokenizer has a BOS distinct from EOS (LLaDA's
    <|startoftext|>; Qwen-style tokenizers, Dream's, have none)."""
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and bos != tokenizer.eos_token_id else []
    return prefix + encode_text(tokenizer, text)


def encode_text(tokenizer, text):
    """Data text as token ids, a special token's string in it ('<|endoftext|>', '<|mdm_mask|>') read as
    the characters it is: otherwise a document or answer quoting one would put EOS or the mask id among the
    training targets."""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def refuse_special_strings(tokenizer, texts):
    """A chat template reads its whole rendering with special tokens parsed, so text quoting one cannot go
    through it as text: named and refused (such data trains without --chat)."""
    for text in texts:
        found = [t for t in tokenizer.all_special_tokens if t in text]
        if found:
            raise InputError(f"an item's text holds the tokenizer's special token {found[0]!r} ({text[:60]!r}...), "
                             f"which a chat template would read as that token: remove it from the data, or use "
                             f"--chat=false")


def tokenize_task(task, items, tokenizer, max_len, chat=False, log=print):
    """Training examples (0-shot prompts): dicts with prompt_ids and response_ids. Examples whose
    prompt + response + EOS is longer than max_len are dropped, never truncated, and counted in the log."""
    out = []
    for item in items:
        prompt_ids, response_ids = format_example(task, item, tokenizer, chat=chat)
        if len(prompt_ids) + len(response_ids) + 1 <= max_len:
            out.append({"prompt_ids": prompt_ids, "response_ids": response_ids})
    dropped = len(items) - len(out)
    if dropped and log:
        log(f"{task}: dropped {dropped} of {len(items)} examples longer than max_len={max_len} tokens")
    if not items:
        raise InputError(f"{task}: the training split is empty")
    if not out:
        raise InputError(f"{task}: all {len(items)} examples are longer than max_len={max_len} tokens")
    return out


def collate(examples, eos_id):
    """Right-pad prompt + response + EOS with EOS to the longest row. maskable: the response and every EOS
    after it (LLaDA's SFT: the padding is trained, which teaches the model to stop); padding: positions
    after the response's first EOS (pooling ignores them); no attention mask (LLaDA's SFT uses none).
    A packed pretraining chunk (corpus.pack) gets no EOS of its own: its EOS are the documents' ends."""
    lengths = [len(e["prompt_ids"]) + len(e["response_ids"]) + (0 if e.get("packed") else 1) for e in examples]
    T = max(lengths)
    input_ids = torch.full((len(examples), T), eos_id, dtype=torch.long)
    maskable = torch.zeros(len(examples), T, dtype=torch.bool)
    padding = torch.zeros(len(examples), T, dtype=torch.bool)
    for b, (e, n) in enumerate(zip(examples, lengths)):
        p = len(e["prompt_ids"])
        tokens = e["prompt_ids"] + e["response_ids"]
        input_ids[b, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        maskable[b, p:] = True
        padding[b, n:] = True
    return {"input_ids": input_ids, "maskable": maskable, "padding": padding}


# -----------------------------------------------------------------------------
# batch order for torchrun


def epoch_batches(n_examples, batch_size, world_size=1, rank=0, seed=0, epoch=0):
    """This rank's micro-batches (lists of example indices) for one epoch, a pure function of
    (seed, epoch), so a resumed run continues at any step. Each step takes the next world_size *
    batch_size examples of a seeded permutation and gives rank r its slice, so every example is seen once
    per epoch. The last, short step is split as evenly as possible; if it has fewer examples than ranks,
    it is topped up from the start of the permutation (every rank must run the same number of steps)."""
    if n_examples < 1:
        raise ValueError("no examples to batch")
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    step_size = world_size * batch_size
    batches = []
    for start in range(0, n_examples, step_size):
        chunk = order[start:start + step_size]
        if len(chunk) < world_size:
            chunk = chunk + order[: world_size - len(chunk)]
        if len(chunk) == step_size:
            batches.append(chunk[rank * batch_size:(rank + 1) * batch_size])
        else:
            batches.append([int(i) for i in torch.tensor(chunk).tensor_split(world_size)[rank].tolist()])
    return batches
