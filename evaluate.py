"""
Generation with LLaDA's low-confidence remasking sampler, and the paper's scoring.

  python evaluate.py --checkpoint out-tiny --task tiny-regex
  torchrun --nproc_per_node 8 evaluate.py --checkpoint out --task gsm8k --shots 4

checkpoint: a hub id, a release checkpoint directory, or a train.py output directory (its final/).
Writes <out_dir>/<task>-<shots>shot.jsonl (prompt, generation, gold, scores per example) and
<out_dir>/<task>-<shots>shot.json (the summary). Each rank evaluates its own shard; rank 0 gathers and writes.

Sampler (../shared/REFERENCE.md §4, LLaDA's public generate.py): the canvas is the prompt followed by
gen_length mask tokens, filled block by block, left to right; each block gets steps / n_blocks steps and
each step commits the most confident predictions of the block's still-masked positions.
"""

import json
import math
import os
import random
import re
import sqlite3
import string
import sys
import time
import zlib
from collections import Counter
from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F

import data
import model as modellib
from configurator import ConfigError, configure, setting_keys
from train import close_distributed, init_distributed, resolve_dtype

# -----------------------------------------------------------------------------
# settings
checkpoint = "out"
task = "gsm8k"
data_dir = ""  # local release files; empty = the hub (gsm8k, spider)
spider_db_dir = ""  # Spider's database/ folder (<db_id>/<db_id>.sqlite); empty = <data_dir>/database
shots = 0  # 0 or 4 in the paper
limit = 0  # > 0: the first N evaluation items only
batch_size = 8
steps = 0  # 0 = 128, or gen_length when shorter (paper: 128 steps)
gen_length = 0  # 0 = the task's (256 GSM8K, 512 Django / NL-RX / Spider)
block_length = 0  # 0 = min(128, gen_length)
temperature = 0.0  # 0 = greedy (the paper)
cfg_scale = 0.0  # classifier-free guidance scale; 0 = off
chat = "auto"  # 'auto' (instruct checkpoints), 'true', 'false'
dtype = "auto"  # the weights' dtype: auto = bfloat16 on GPU, float32 on CPU
device = "auto"
seed = 0
sql_timeout = 5.0  # seconds per Spider query
out_dir = ""  # empty = beside the checkpoint (or ./eval for a hub id)
KEYS = setting_keys(globals())

# -----------------------------------------------------------------------------
# the sampler


def add_gumbel_noise(logits, temperature, generator=None):
    """LLaDA's Gumbel-max in float64 (low precision Gumbel noise degrades quality): argmax of
    exp(logits) / (-log u)^temperature samples from softmax(logits / temperature)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    return logits.exp() / (-torch.log(noise)) ** temperature


def num_transfer_tokens(masked_count, steps):
    """Per row: m // steps tokens every step, plus one more in the first m % steps steps. (B,) -> (B, steps)."""
    base = masked_count // steps
    extra = masked_count % steps
    schedule = base[:, None].repeat(1, steps)
    schedule += (torch.arange(steps, device=masked_count.device)[None, :] < extra[:, None]).long()
    return schedule


@torch.no_grad()
def generate(model, prompts, *, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
             generator=None, on_step=None):
    """Generate gen_length tokens after each prompt (lists of token ids of any lengths), batched.
    Rows are laid out prompt + canvas and right-padded to the longest, with the padding hidden from
    attention, so every row sees the positions and keys it would see alone. Logits are computed only for
    the current block. Returns a (B, gen_length) tensor. on_step(canvas), if given, sees every step."""
    cfg = model.cfg
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} must be a multiple of block_length {block_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
    steps_per_block = steps // n_blocks
    dev = next(model.parameters()).device
    B = len(prompts)
    prompt_len = torch.tensor([len(p) for p in prompts], device=dev)
    T = int(prompt_len.max()) + gen_length
    x = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        x[b, :len(p)] = torch.tensor(p, dtype=torch.long, device=dev)
        x[b, len(p):len(p) + gen_length] = cfg.mask_token_id
    positions = torch.arange(T, device=dev)[None, :]
    real = positions < (prompt_len + gen_length)[:, None]  # False on the right padding
    is_prompt = positions < prompt_len[:, None]
    rows = torch.arange(B, device=dev)[:, None]

    for block in range(n_blocks):
        start = prompt_len + block * block_length  # (B,)
        block_pos = start[:, None] + torch.arange(block_length, device=dev)[None, :]  # (B, L)
        in_block = torch.zeros(B, T, dtype=torch.bool, device=dev)
        in_block[rows, block_pos] = True
        schedule = num_transfer_tokens((x[rows, block_pos] == cfg.mask_token_id).sum(1), steps_per_block)
        most = schedule.max(dim=0).values.tolist()  # per step, the largest k of any row (one sync per block)
        for step in range(steps_per_block):
            if cfg_scale > 0:  # unconditional copy: the prompt masked
                x_uncond = torch.where(is_prompt, cfg.mask_token_id, x)
                both = model(torch.cat([x, x_uncond]), padding_mask=torch.cat([real, real]),
                             logits_at=torch.cat([in_block, in_block])).logits.view(2, B, block_length, -1)
                logits = both[1] + (cfg_scale + 1) * (both[0] - both[1])
            else:
                logits = model(x, padding_mask=real, logits_at=in_block).logits.view(B, block_length, -1)
            x0 = add_gumbel_noise(logits, temperature, generator).argmax(dim=-1)  # (B, L)
            confidence = F.softmax(logits.float(), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            current = x[rows, block_pos]
            still_masked = current == cfg.mask_token_id
            confidence = torch.where(still_masked, confidence, -math.inf)
            # top-k per row with k from the row's schedule: one top-k at the largest k, keeping each row's first k
            commit = torch.zeros_like(still_masked)
            if most[step]:
                top = torch.topk(confidence, most[step], dim=1).indices
                commit.scatter_(1, top, torch.arange(most[step], device=dev)[None, :] < schedule[:, step, None])
            x[rows, block_pos] = torch.where(commit, x0, current)
            if on_step is not None:
                on_step(x.clone())
    return torch.stack([x[b, len(p):len(p) + gen_length] for b, p in enumerate(prompts)])


def cut_at_stop(ids, stop_ids):
    """The generated ids up to (not including) the first EOS or end-of-turn token."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i]
    return ids


# -----------------------------------------------------------------------------
# GSM8K


NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def to_number(text):
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_gsm8k_answer(text):
    """'#### N', else 'The answer is N', else the last number in the text; commas, dollar signs and a
    trailing period are dropped. Returns a Fraction, or None."""
    for pattern in (r"####\s*(.*)", r"[Tt]he answer is[:\s]*(.*)"):
        m = re.search(pattern, text)
        if m:
            found = NUMBER.search(m.group(1))
            if found:
                return to_number(found.group(0))
    numbers = NUMBER.findall(text)
    return to_number(numbers[-1]) if numbers else None


def score_gsm8k(prediction, item):
    gold = extract_gsm8k_answer(item["output"])
    predicted = extract_gsm8k_answer(prediction)
    return {"accuracy": float(predicted is not None and predicted == gold)}


# -----------------------------------------------------------------------------
# NL-RX: a small regex engine for the dk.brics syntax the dataset's authors used (REFERENCE.md §6), on
# Brzozowski derivatives: matching and DFA exploration work on derivative terms, never backtrack, and
# stop at MAX_STATES, so no pattern can hang the scorer. Model output never reaches Python's re.
# Syntax: | (lowest) < & < concatenation < postfix * + ? {n} {n,} {n,m} < prefix ~ (highest), so
# ~(dog)(.*) is (~(dog))(.*). '.' is any character, [..] / [^..] classes with ranges, '\' escapes the next
# character. Like brics, '\b' is the literal letter 'b' (NL-RX's "words with" targets use \b...\b); gold
# and prediction are read the same way. Every other character is itself.

MAX_STATES = 100_000  # derivative states; real NL-RX golds need up to about 6,000
MAX_REPEAT = 50
NLRX_ALPHABET = string.ascii_letters + string.digits + " "
OTHER = "\uffff"  # stands for every character no regex mentions

EMPTY, EPS = ("empty",), ("eps",)


class RegexError(ValueError):
    pass


def chars_node(chars, negated=False):
    return ("set", negated, frozenset(chars))


def mk_or(*items):
    flat = set()
    for r in items:
        flat |= r[1] if r[0] == "or" else {r}
    flat.discard(EMPTY)
    if ("not", EMPTY) in flat:
        return ("not", EMPTY)
    if not flat:
        return EMPTY
    return next(iter(flat)) if len(flat) == 1 else ("or", frozenset(flat))


def mk_and(*items):
    flat = set()
    for r in items:
        flat |= r[1] if r[0] == "and" else {r}
    if EMPTY in flat:
        return EMPTY
    flat.discard(("not", EMPTY))
    if not flat:
        return ("not", EMPTY)
    return next(iter(flat)) if len(flat) == 1 else ("and", frozenset(flat))


def mk_cat(a, b):
    if a == EMPTY or b == EMPTY:
        return EMPTY
    if a == EPS:
        return b
    if b == EPS:
        return a
    if a[0] == "cat":  # right-associate, so equal languages get equal terms more often
        return mk_cat(a[1], mk_cat(a[2], b))
    return ("cat", a, b)


def mk_star(r):
    if r in (EMPTY, EPS):
        return EPS
    return r if r[0] == "star" else ("star", r)


def mk_not(r):
    return r[1] if r[0] == "not" else ("not", r)


def mk_repeat(r, low, high):
    """r{low,high}; high None = unbounded."""
    if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
        raise RegexError(f"repetition {{{low},{high}}} out of range")
    out = EPS
    for _ in range(low):
        out = mk_cat(out, r)
    if high is None:
        return mk_cat(out, mk_star(r))
    optional = mk_or(r, EPS)
    for _ in range(high - low):
        out = mk_cat(out, optional)
    return out


def parse_regex(text):
    if len(text) > 1000:
        raise RegexError("regex longer than 1000 characters")
    pos = 0

    def peek():
        return text[pos] if pos < len(text) else None

    def take():
        nonlocal pos
        if pos >= len(text):
            raise RegexError("unexpected end of regex")
        pos += 1
        return text[pos - 1]

    def union():
        r = inter()
        while peek() == "|":
            take()
            r = mk_or(r, inter())
        return r

    def inter():
        r = concat()
        while peek() == "&":
            take()
            r = mk_and(r, concat())
        return r

    def concat():
        parts = []
        while peek() is not None and peek() not in "|&)":
            parts.append(repeat())
        out = EPS
        for p in reversed(parts):
            out = mk_cat(p, out)
        return out

    def number():
        digits = ""
        while peek() is not None and peek().isdigit():
            digits += take()
        if not digits:
            raise RegexError(f"expected a number at {pos}")
        return int(digits)

    def repeat():
        r = complement()
        while peek() is not None and peek() in "*+?{":
            op = take()
            if op == "*":
                r = mk_star(r)
            elif op == "+":
                r = mk_cat(r, mk_star(r))
            elif op == "?":
                r = mk_or(r, EPS)
            else:
                low, high = number(), None
                if peek() == ",":
                    take()
                    high = number() if peek() != "}" else None
                else:
                    high = low
                if take() != "}":
                    raise RegexError(f"expected '}}' at {pos - 1}")
                r = mk_repeat(r, low, high)
        return r

    def complement():
        if peek() == "~":
            take()
            return mk_not(complement())
        return atom()

    def atom():
        c = take()
        if c == "(":
            if peek() == ")":
                take()
                return EPS
            r = union()
            if take() != ")":
                raise RegexError(f"expected ')' at {pos - 1}")
            return r
        if c == "[":
            return char_class()
        if c == ".":
            return chars_node((), negated=True)
        if c == "\\":
            return chars_node(take())
        if c in ")]*+?{}|&":
            raise RegexError(f"unexpected {c!r} at {pos - 1}")
        return chars_node(c)

    def char_class():
        negated = peek() == "^"
        if negated:
            take()
        chars = set()
        first = True
        while first or peek() != "]":
            first = False
            c = take()
            if c == "\\":
                c = take()
            if peek() == "-" and pos + 1 < len(text) and text[pos + 1] != "]":
                take()
                end = take()
                if end == "\\":
                    end = take()
                if ord(end) < ord(c) or ord(end) - ord(c) > 1000:
                    raise RegexError(f"bad range {c}-{end}")
                chars |= {chr(i) for i in range(ord(c), ord(end) + 1)}
            else:
                chars.add(c)
        take()
        return chars_node(chars, negated)

    r = union()
    if pos != len(text):
        raise RegexError(f"unexpected {text[pos]!r} at {pos}")
    return r


@lru_cache(maxsize=None)
def nullable(r):
    kind = r[0]
    if kind in ("eps", "star"):
        return True
    if kind in ("empty", "set"):
        return False
    if kind == "cat":
        return nullable(r[1]) and nullable(r[2])
    if kind == "or":
        return any(nullable(x) for x in r[1])
    if kind == "and":
        return all(nullable(x) for x in r[1])
    return not nullable(r[1])  # not


@lru_cache(maxsize=200_000)
def derivative(r, c):
    kind = r[0]
    if kind in ("empty", "eps"):
        return EMPTY
    if kind == "set":
        return EPS if (c in r[2]) != r[1] else EMPTY
    if kind == "cat":
        d = mk_cat(derivative(r[1], c), r[2])
        return mk_or(d, derivative(r[2], c)) if nullable(r[1]) else d
    if kind == "or":
        return mk_or(*(derivative(x, c) for x in r[1]))
    if kind == "and":
        return mk_and(*(derivative(x, c) for x in r[1]))
    if kind == "star":
        return mk_cat(derivative(r[1], c), r)
    return mk_not(derivative(r[1], c))


def mentioned_sets(r, out=None):
    out = set() if out is None else out
    if r[0] == "set":
        out.add(r[2])
    elif r[0] in ("cat",):
        mentioned_sets(r[1], out), mentioned_sets(r[2], out)
    elif r[0] in ("or", "and"):
        for x in r[1]:
            mentioned_sets(x, out)
    elif r[0] in ("star", "not"):
        mentioned_sets(r[1], out)
    return out


def char_classes(*regexes):
    """Partition the characters into classes no regex can tell apart: {representative: members}.
    Characters no regex mentions form one class, represented by OTHER."""
    sets = set()
    for r in regexes:
        mentioned_sets(r, sets)
    sets = sorted(sets, key=lambda s: sorted(s))
    groups = {}
    for ch in sorted(set().union(*sets)) if sets else []:
        groups.setdefault(tuple(ch in s for s in sets), []).append(ch)
    classes = {members[0]: members for members in groups.values()}
    classes[OTHER] = []
    return classes


def matches(r, text, classes_index):
    for ch in text:
        r = derivative(r, classes_index.get(ch, OTHER))
        if r == EMPTY:
            return False
    return nullable(r)


def explore(start, reps, deadline):
    """The derivative automaton from start: {state: {rep: next state}}. Raises RegexError past MAX_STATES."""
    edges, todo = {}, [start]
    while todo:
        s = todo.pop()
        if s in edges:
            continue
        if len(edges) >= MAX_STATES or time.monotonic() > deadline:
            raise RegexError("automaton too large")
        edges[s] = {c: derivative(s, c) for c in reps}
        todo.extend(t for t in edges[s].values() if t not in edges)
    return edges


def equivalent(a, b, time_limit=5.0):
    """DFA equivalence: explore pairs of derivatives; a pair that disagrees on acceptance is a counterexample."""
    if a == b:
        return True
    reps = list(char_classes(a, b))
    deadline = time.monotonic() + time_limit
    seen, todo = set(), [(a, b)]
    while todo:
        pair = todo.pop()
        if pair in seen:
            continue
        if nullable(pair[0]) != nullable(pair[1]):
            return False
        seen.add(pair)
        if len(seen) > MAX_STATES or time.monotonic() > deadline:
            raise RegexError("automaton too large")
        todo.extend((derivative(pair[0], c), derivative(pair[1], c)) for c in reps)
    return True


def sample_strings(gold, n_matching, n_random, seed, max_length=30):
    """n_matching strings the gold regex accepts (a random walk on its automaton towards acceptance) and
    n_random strings over NLRX_ALPHABET (lengths 0-20). All-random when the gold language is empty."""
    rng = random.Random(seed)
    members = char_classes(gold)
    mentioned = {c for ms in members.values() for c in ms}
    members[OTHER] = [c for c in NLRX_ALPHABET + "#%@" if c not in mentioned]  # unmentioned characters
    edges = explore(gold, list(members), time.monotonic() + 5.0)
    # distance to acceptance, by backward search
    dist = {s: 0 for s in edges if nullable(s)}
    frontier = list(dist)
    reverse = {}
    for s, out in edges.items():
        for c, t in out.items():
            reverse.setdefault(t, []).append(s)
    while frontier:
        nxt = []
        for t in frontier:
            for s in reverse.get(t, []):
                if s not in dist:
                    dist[s] = dist[t] + 1
                    nxt.append(s)
        frontier = nxt
    live = {s: [c for c, t in edges[s].items() if t in dist] for s in dist}
    closer = {s: [c for c in live[s] if dist[edges[s][c]] < dist[s]] for s in dist}
    strings = []
    if gold in dist:
        for _ in range(n_matching):
            s, out = gold, []
            while True:
                options = live[s] if len(out) < max_length else closer[s]  # past max_length: head for acceptance
                if nullable(s) and (not options or rng.random() < 0.15 or len(out) >= max_length):
                    break
                c = rng.choice(options)
                out.append(rng.choice(members[c]))
                s = edges[s][c]
            strings.append("".join(out))
    else:
        n_random += n_matching
    for _ in range(n_random):
        strings.append("".join(rng.choice(NLRX_ALPHABET) for _ in range(rng.randint(0, 20))))
    return strings


def score_regex(prediction, item):
    """Exact match; functional match on 200 strings (100 drawn to match the gold, 100 random); DFA
    equivalence. A prediction that does not parse, or whose automaton is too large, scores 0."""
    pred_text, gold_text = prediction.strip(), item["output"].strip()
    scores = {"exact": float(pred_text == gold_text), "functional": 0.0, "dfa": 0.0}
    gold = parse_regex(gold_text)
    try:
        pred = parse_regex(pred_text)
    except RegexError:
        return scores
    seed = zlib.crc32(gold_text.encode())
    classes_index = {ch: rep for rep, ms in char_classes(gold, pred).items() for ch in ms}
    try:
        tests = sample_strings(gold, 100, 100, seed)
        scores["functional"] = float(all(matches(gold, s, classes_index) == matches(pred, s, classes_index)
                                         for s in tests))
        scores["dfa"] = float(equivalent(pred, gold))
    except RegexError:
        pass
    return scores


# -----------------------------------------------------------------------------
# Spider


def normalize_sql(sql):
    """Lower case, single quotes for double, spaces around punctuation, single spaces, no trailing ';'."""
    sql = sql.strip().rstrip(";").replace('"', "'").lower()
    sql = re.sub(r"\s*([(),=<>!*+\-/])\s*", r" \1 ", sql)
    return re.sub(r"\s+", " ", sql).strip()


ALLOWED_SQL = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def run_sql(db_path, sql, timeout):
    """Rows of a query on a database opened read-only, with only reads allowed by the authorizer and a
    time limit enforced by the progress handler. Raises sqlite3.Error (a timeout is 'interrupted')."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
    try:
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
        conn.set_authorizer(lambda action, *args: sqlite3.SQLITE_OK if action in ALLOWED_SQL else sqlite3.SQLITE_DENY)
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def score_spider(prediction, item, db_dir=None, timeout=5.0):
    """The prediction cut at the first ';' (the paper's stopping-robust cleaning). Exact match after
    normalize_sql (string level, not Spider's component matching). Execution match: the same rows as the
    gold query (as a multiset, or in order when the gold has ORDER BY); None when the database is absent."""
    pred = prediction.split(";")[0].strip()
    gold = item["output"].strip()
    scores = {"exact": float(normalize_sql(pred) == normalize_sql(gold)), "exec": None}
    db_path = os.path.join(db_dir or "", item.get("db_id") or "", f"{item.get('db_id')}.sqlite")
    if not db_dir or not os.path.exists(db_path):
        return scores
    try:
        gold_rows = run_sql(db_path, gold, timeout)
    except (sqlite3.Error, sqlite3.Warning) as e:  # the gold itself does not run here: not scorable
        scores["gold_error"] = str(e)
        return scores
    try:
        pred_rows = run_sql(db_path, pred, timeout)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):
        scores["exec"] = 0.0
        return scores
    if "order by" in gold.lower():
        scores["exec"] = float(pred_rows == gold_rows)
    else:
        scores["exec"] = float(Counter(map(repr, pred_rows)) == Counter(map(repr, gold_rows)))
    return scores


# -----------------------------------------------------------------------------
# Django


def collapse_ws(text):
    return re.sub(r"\s+", " ", text).strip()


def score_django(prediction, item):
    """Exact match; whitespace-normalised prefix match (the gold, whitespace collapsed, starts the
    prediction); and the decomposition of Table 5: exact / stopping artifact (correct code followed by
    more tokens) / content error."""
    exact = prediction.strip() == item["output"].strip()
    prefix = collapse_ws(prediction).startswith(collapse_ws(item["output"]))
    category = "exact" if exact else ("stopping_artifact" if prefix else "content_error")
    return {"exact": float(exact), "ws_prefix": float(prefix or exact), "category": category}


def score(task_name, prediction, item, db_dir=None, timeout=5.0):
    if task_name == "gsm8k":
        return score_gsm8k(prediction, item)
    if task_name in ("nlrx", "nlrx-turk", "tiny-regex"):
        return score_regex(prediction, item)
    if task_name == "spider":
        return score_spider(prediction, item, db_dir, timeout)
    if task_name == "django":
        return score_django(prediction, item)
    raise ValueError(f"no scorer for task {task_name!r}")


def summarize(records):
    """Mean of every numeric metric over the examples that have it, category fractions, counts."""
    summary = {"n": len(records)}
    keys = sorted({k for r in records for k, v in r["scores"].items()})
    for k in keys:
        values = [r["scores"][k] for r in records if r["scores"].get(k) is not None]
        if k == "gold_error":  # gold queries that do not run: counted, their messages stay in the jsonl
            summary["gold_errors"] = len(values)
        elif values and isinstance(values[0], str):
            for cat, n in sorted(Counter(values).items()):
                summary[f"{k}/{cat}"] = n / len(values)
        elif values:
            summary[k] = sum(values) / len(values)
            if len(values) != len(records):
                summary[f"{k}_n"] = len(values)
    return summary


# -----------------------------------------------------------------------------
# the command


def uses_chat_template(checkpoint_arg, ckpt_dir):
    """chat=auto: what train.py used (train_config.json beside final/), else whether the name says Instruct."""
    for path in (os.path.join(ckpt_dir, "train_config.json"), os.path.join(ckpt_dir, "..", "train_config.json")):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f).get("chat") == "true"
    return "instruct" in checkpoint_arg.lower()


def main(argv):
    cfg = configure(globals(), KEYS, argv)
    if task not in data.TASKS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(data.TASKS)}")
    if shots < 0 or batch_size < 1 or limit < 0 or temperature < 0 or cfg_scale < 0:
        raise ConfigError("shots, limit, temperature and cfg_scale must be >= 0, batch_size >= 1")
    import torch.distributed as dist
    world, rank, dev = init_distributed(device)
    master = rank == 0

    ckpt_dir = modellib.resolve_checkpoint_dir(checkpoint)
    model = modellib.from_pretrained(ckpt_dir, dtype=resolve_dtype(dtype, dev), device=dev).eval()
    tokenizer = modellib.load_tokenizer(ckpt_dir, model.cfg)
    use_chat = chat == "true" or (chat == "auto" and uses_chat_template(checkpoint, ckpt_dir))
    length = gen_length or data.TASKS[task]["gen_length"]
    block = block_length or min(128, length)
    n_steps = steps or min(128, length)
    items = data.load_task(task, "eval", data_dir or None)
    train_items = data.load_task(task, "train", data_dir or None) if shots else []
    if limit:
        items = items[:limit]
    db_dir = spider_db_dir or (os.path.join(data_dir, "database") if data_dir else "")
    stop_ids = {model.cfg.eos_token_id}
    if use_chat:
        stop_ids.add(data.end_of_turn_id(tokenizer))

    mine = list(range(rank, len(items), world))
    generator = torch.Generator(device=dev).manual_seed(seed + rank)
    records = []
    from tqdm import tqdm
    for start in tqdm(range(0, len(mine), batch_size), disable=not master, desc=f"{task} {shots}-shot"):
        idx = mine[start:start + batch_size]
        prompts = [data.format_example(task, items[i], tokenizer, data.choose_shots(train_items, shots, items[i]),
                                       chat=use_chat)[0] for i in idx]
        out = generate(model, prompts, steps=n_steps, gen_length=length, block_length=block,
                       temperature=temperature, cfg_scale=cfg_scale, generator=generator)
        for i, p, gen in zip(idx, prompts, out.tolist()):
            text = tokenizer.decode(cut_at_stop(gen, stop_ids), skip_special_tokens=True)
            records.append({"index": i, "prompt": tokenizer.decode(p), "prompt_tokens": len(p), "generation": text,
                            "gold": items[i]["output"],
                            "scores": score(task, text, items[i], db_dir, sql_timeout)})
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    if master:
        # past the trained context the positions are extrapolated: run anyway, but say how often
        over = sum(r["prompt_tokens"] + length > model.cfg.max_seq_len for r in records)
        if over:
            print(f"warning: {over} of {len(records)} prompts + gen_length={length} exceed the model's context "
                  f"window of {model.cfg.max_seq_len} tokens")
        target_dir = out_dir or (ckpt_dir if os.path.isdir(checkpoint) else "eval")
        os.makedirs(target_dir, exist_ok=True)
        stem = os.path.join(target_dir, f"{task}-{shots}shot")
        with open(stem + ".jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        summary = {"task": task, "shots": shots, "checkpoint": checkpoint, "steps": n_steps, "gen_length": length,
                   "block_length": block, "temperature": temperature, "over_context_window": over, **summarize(records),
                   "config": cfg}
        with open(stem + ".json", "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
        print(f"wrote {stem}.jsonl and {stem}.json")
    close_distributed(world)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        print(f"evaluate.py: {e}", file=sys.stderr)
        sys.exit(2)
