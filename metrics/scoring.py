r"""
The paper's metrics (DLLM-JEPA, §4.1 and A.9), one scorer per task, and the summary of a run.

  generation --cut at EOS / end-of-turn (evaluate.py)--> text --read_prediction--> prediction
             (GSM8K plain prompts: cut at the next exemplar, LLaDA's stop string; every other task: raw)
  score(task, prediction, item, seed) --> {metric: 1.0 | 0.0 | None, ...notes}     (never raises)
  summarize(records) --> means, counts of undecided items, scorer failures and notes

A score is a function of (prediction, gold, seed) alone: no wall clock, no machine load, no state kept
between items. Any text gets a score: a scorer that fails inside scores every metric 0 with the error in
the record ("scorer_error") and a count in the summary.

  task       metrics (the paper's name)                 follows
  gsm8k      accuracy                                   the number after '####' (else 'The answer is'
                                                        N, else the last number), compared exactly
  nlrx       exact, functional, functional_random200,   regex_engine.py (dk.brics semantics); see
             dfa                                        score_regex
  spider     exec_clean, exec_raw (execution match),    test-suite-sql-eval's exec match (default
             exact_set_clean, exact_set_raw             settings); Spider's exact-set match (spider_exact)
  django     exact, ws_prefix, category                 Table 5's decomposition
"""

import os
import re
import sqlite3
import threading
import traceback
from collections import Counter
from fractions import Fraction
from pathlib import Path

from metrics import regex_engine as rx
from metrics import spider_exact

METRICS = {
    "gsm8k": ("accuracy",),
    "regex": ("exact", "functional", "functional_random200", "dfa"),
    "spider": ("exec_clean", "exec_raw", "exact_set_clean", "exact_set_raw"),
    "django": ("exact", "ws_prefix"),
}
TASK_SCORER = {"gsm8k": "gsm8k", "nlrx": "regex", "nlrx-turk": "regex", "tiny-regex": "regex",
               "spider": "spider", "django": "django"}


CUT_AT_NEXT_EXEMPLAR = ("gsm8k",)  # the tasks whose published protocol stops generation at the next exemplar


def cut_at_next_exemplar(text, input_label):
    """(text, whether it was cut): a plain-format prompt ends '... Label: ...\\nOutput-label:', and a model
    that goes on writing a next exemplar of its own ('Question: ... #### 5') would have that exemplar's
    answer scored. Cut at the first '<input_label>:', as LLaDA's public lm-eval setup does with its stop
    strings ('Question:' for GSM8K)."""
    at = text.find(f"{input_label}:")
    return (text[:at], True) if at >= 0 else (text, False)


def read_prediction(task, text, input_label, use_chat):
    """(prediction, notes): what is scored, and what a reader should count. The cut at the next exemplar is
    LLaDA's stop string for GSM8K few-shot, so only CUT_AT_NEXT_EXEMPLAR tasks with plain prompts get it
    (note 'cut_at_exemplar'). Elsewhere the prediction is what the model wrote up to EOS: Spider's raw
    execution match and Django's Table 5 exist to see 'SELECT ... Question: ...' or 'return x Pseudo-code:
    ...' as the stopping artifacts they are; such a text is noted 'exemplar_follows' and left uncut."""
    if use_chat:
        return text, {}
    if task in CUT_AT_NEXT_EXEMPLAR:
        prediction, cut = cut_at_next_exemplar(text, input_label)
        return prediction, {"cut_at_exemplar": True} if cut else {}
    return text, {"exemplar_follows": True} if f"{input_label}:" in text else {}


# -----------------------------------------------------------------------------
# GSM8K

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def to_number(text):
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):  # also a digit string over Python's 4,300-digit limit
        return None


def extract_gsm8k_answer(text):
    """'#### N', else 'The answer is N', else the last number in the text; commas, dollar signs and a
    trailing period are dropped, and U+2212 (the typographic minus) is a minus sign: '#### ' then
    U+2212 then '72' is -72, not 72. Returns a Fraction, or None."""
    text = text.replace("\u2212", "-")
    for pattern in (r"####\s*(.*)", r"[Tt]he answer is[:\s]*(.*)"):
        m = re.search(pattern, text)
        if m:
            found = NUMBER.search(m.group(1))
            if found:
                return to_number(found.group(0))
    numbers = NUMBER.findall(text)
    return to_number(numbers[-1]) if numbers else None


def score_gsm8k(prediction, item, seed=0):
    gold = extract_gsm8k_answer(item["output"])
    predicted = extract_gsm8k_answer(prediction)
    return {"accuracy": float(predicted is not None and predicted == gold)}


# -----------------------------------------------------------------------------
# NL-RX


CONSTANT_ANSWERS = {"empty_language": "~(.*)", "all_strings": ".*"}  # the two constant answers' floors


def score_regex(prediction, item, seed=0):
    """regex_scores of the prediction, and what a reader needs to see the floor: 'gold_language' (empty,
    all, other or undecided: of the first 500 NL-RX-SYNTH test golds, 89 denote the empty language and 29
    every string, so a model that always answers one constant regex scores DFA 0.178 there) and 'floor':
    the scores of the two constant answers (CONSTANT_ANSWERS) on this item, drawn from the same strings."""
    scores = regex_scores(prediction, item["output"], seed)
    if "gold_error" in scores:
        return scores
    floor = {name: regex_scores(text, item["output"], seed) for name, text in CONSTANT_ANSWERS.items()}
    if floor["empty_language"]["dfa"] == 1.0:
        scores["gold_language"] = "empty"
    elif floor["all_strings"]["dfa"] == 1.0:
        scores["gold_language"] = "all"
    else:
        undecided = any("dfa" in f.get("undecided", ()) for f in floor.values())
        scores["gold_language"] = "undecided" if undecided else "other"
    scores["floor"] = {name: {m: f[m] for m in METRICS["regex"]} for name, f in floor.items()}
    return scores


def regex_scores(prediction, gold_text, seed=0):
    """exact: the strings equal (after stripping). functional: gold and prediction agree on 200 strings,
    100 drawn to match the gold and 100 random (lengths 0-20 over letters, digits and space); a stricter
    reading of the paper's '200 random strings', since random strings rarely match a gold like .*dog.*.
    functional_random200: the literal reading, 200 random strings drawn without regard to the gold.
    dfa: the languages are equal. The strings are drawn from (seed, gold text). A prediction that does
    not parse scores 0; a question the engine cannot settle within its work budget scores 0 for that
    metric and is listed in 'undecided' (counted apart in the summary)."""
    pred_text, gold_text = prediction.strip(), gold_text.strip()
    scores = {"exact": float(pred_text == gold_text), "functional": 0.0, "functional_random200": 0.0, "dfa": 0.0}
    engine = rx.Engine(rx.BUDGET)
    try:
        gold = engine.parse(gold_text)
    except (rx.RegexError, rx.Undecided) as e:  # not scorable here
        return {**dict.fromkeys(scores), "gold_error": f"gold regex: {e}"}
    try:
        pred = engine.parse(pred_text)
    except rx.RegexError as e:
        return {**scores, "reason": f"not a regex: {e}"}
    except rx.Undecided as e:
        return {**scores, "undecided": ["functional", "functional_random200", "dfa"], "reason": str(e)}

    undecided, reasons = [], []
    rng = rx.seeded_rng(seed, gold_text)
    checks = {"functional": lambda: rx.matching_strings(engine, gold, 100, rng) + rx.random_strings(100, rng),
              "functional_random200": lambda: rx.random_strings(200, rng),
              "dfa": None}
    for metric, draw in checks.items():
        engine.reset_budget()
        try:
            if draw is None:
                scores[metric] = float(engine.equivalent(pred, gold))
            else:
                index = rx.class_index(engine.char_classes(gold, pred))
                scores[metric] = float(all(engine.matches(gold, s, index) == engine.matches(pred, s, index)
                                           for s in draw()))
        except rx.Undecided as e:
            undecided.append(metric)
            reasons.append(f"{metric}: {e}")
    if undecided:
        scores.update(undecided=undecided, reason="; ".join(reasons))
    return scores


# -----------------------------------------------------------------------------
# Spider: a read-only SQL sandbox and test-suite-sql-eval's execution match

# What bounds one query (README, Metrics): work by a count, time and memory by hard limits.
SQL_MAX_STEPS = 100_000_000  # sqlite virtual-machine instructions per query (the same count on any machine):
#   every Spider dev gold needs < 100,000; the slowest correct prediction seen, a correlated subquery on world_1,
#   66.7M (about 0.9 s here); 100M is about 1-1.5 s of sqlite on the project's CPU
SQL_SAFETY_SECONDS = 5.0  # a watchdog interrupts the query (sqlite3_interrupt) past this: the item is undecided
PROGRESS_EVERY = 1_000  # instructions between two calls of the counting handler
SQL_HEAP_BYTES = 256 * 2**20  # sqlite's own memory, process-wide (sorters and temp tables held in memory)
RESULT_BYTES = 64 * 2**20  # the rows one query may hand back to Python (values' lengths plus 16 bytes each)
SQL_LIMITS = {  # per connection: no single value or statement can grow past these; no Spider value comes near
    sqlite3.SQLITE_LIMIT_LENGTH: 100_000,  # bytes in one string or blob (the longest stored value seen: 81);
    #   bounds one call: instr/replace of 100 KB against 50 KB is about 0.1 s (1 MB against 0.5 MB was 11 s)
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 100,  # the longest gold LIKE/GLOB pattern has 42 characters
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 200,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
}
ALLOWED_SQL = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# One call of printf('%.*c', 999999999, 'a') runs for seconds whatever the length limit (its loop goes on
# after the result is refused); no Spider gold query calls printf or format.
DENIED_FUNCTIONS = {"printf", "format"}


class SQLFailure(Exception):
    """The query did not give a result: why, in a line."""


class SQLUndecided(SQLFailure):
    """The safety net stopped the query before the instruction count did: the outcome is not decided."""


def _authorize(action, arg1, arg2, *rest):
    if action not in ALLOWED_SQL or (action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def open_read_only(db_path):
    """The database through a file: URI built by pathlib (so '#', '?' or '%' in a folder name are escaped,
    never read as URI syntax), mode=ro (a missing file is an error, never created), the limits above, temp
    storage in memory under the heap limit (so a huge sort fails with MemoryError instead of filling the
    disk), and an authorizer that allows reading only."""
    conn = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    for limit, value in SQL_LIMITS.items():
        conn.setlimit(limit, value)
    conn.execute(f"PRAGMA hard_heap_limit={SQL_HEAP_BYTES}")  # process-wide; scoring is the one sqlite user
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.text_factory = lambda b: b.decode("utf-8", errors="ignore")  # as test-suite-sql-eval
    conn.set_authorizer(_authorize)
    return conn


def fetch_bounded(cursor, max_rows):
    """The cursor's rows; SQLFailure past max_rows (None: no cap) or past RESULT_BYTES held."""
    rows, held = [], 0
    while True:
        chunk = cursor.fetchmany(256)
        if not chunk:
            return rows
        rows += chunk
        held += sum(16 + (len(v) if isinstance(v, (str, bytes)) else 0) for row in chunk for v in row)
        if max_rows is not None and len(rows) > max_rows:
            raise SQLFailure(f"more than {max_rows} rows: more than the gold's, so it cannot match")
        if held > RESULT_BYTES:
            raise SQLFailure(f"a result of more than {RESULT_BYTES // 2**20} MB")


def run_sql(db_path, sql, max_steps=SQL_MAX_STEPS, safety_seconds=SQL_SAFETY_SECONDS, max_rows=None):
    """The rows of one query. Work is bounded by counting virtual-machine instructions (the same count on
    every machine); time by a watchdog that interrupts the query at safety_seconds (then SQLUndecided:
    neither right nor wrong), which fires for real because no single instruction can run long (SQL_LIMITS);
    memory by SQL_HEAP_BYTES inside sqlite and fetch_bounded outside. Raises SQLFailure: not one statement
    that returns rows, an error, past max_steps, more rows than max_rows, or a result too large."""
    if not sql.strip():
        raise SQLFailure("empty query")
    conn = open_read_only(db_path)
    counted, stopped_by_clock = [0], threading.Event()

    def progress():
        counted[0] += PROGRESS_EVERY
        return int(counted[0] > max_steps)

    def interrupt():
        stopped_by_clock.set()
        conn.interrupt()

    conn.set_progress_handler(progress, PROGRESS_EVERY)
    watchdog = threading.Timer(safety_seconds, interrupt)
    watchdog.start()
    try:
        cursor = conn.execute(sql)
        if cursor.description is None:  # ';', a comment, a PRAGMA: no result set to compare
            raise SQLFailure("not a query that returns rows")
        return fetch_bounded(cursor, max_rows)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError, RecursionError) as e:
        if counted[0] > max_steps:
            raise SQLFailure(f"more than {max_steps:,} sqlite instructions") from None
        if stopped_by_clock.is_set():
            raise SQLUndecided(f"stopped by the {safety_seconds:g} s safety net") from None
        raise SQLFailure(f"{type(e).__name__}: {str(e)[:200]}") from None
    finally:
        watchdog.cancel()
        conn.close()


def remove_distinct(sql):
    """The query without its DISTINCT keywords (test-suite-sql-eval's default, keep_distinct=False), found
    by sqlglot's tokenizer so that a 'distinct' inside a string stays. Text it cannot tokenize is kept."""
    from sqlglot.tokens import Tokenizer, TokenType
    try:
        tokens = Tokenizer().tokenize(sql)
    except Exception:  # sqlglot raises its own TokenError and, on odd input, plain errors
        return sql
    for token in reversed([t for t in tokens if t.token_type == TokenType.DISTINCT]):
        sql = sql[:token.start] + sql[token.end + 1:]
    return sql


def postprocess_sql(sql):
    """test-suite-sql-eval's postprocess and replace_cur_year."""
    sql = sql.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
    return re.sub(r"year\s*\(\s*curdate\s*\(\s*\)\s*\)", "2020", sql, flags=re.IGNORECASE)


def _row_key(row):
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


MAX_PERMUTATIONS = 10_000


def column_permutations(gold_rows, pred_rows):
    """The column orders of the prediction that could make it equal to the gold: for each gold column, the
    prediction columns whose every value occurs in that gold column (test-suite-sql-eval's constraint,
    applied to every row, which prunes only impossible orders), enumerated in product order. Prediction
    columns equal in every row are interchangeable, so only the first unused one of them is tried: nine
    equal columns in reverse order are one order to try, not 9! (they hit MAX_PERMUTATIONS before)."""
    n = len(gold_rows[0])
    gold_columns = [{row[i] for row in gold_rows} for i in range(n)]
    allowed = [[j for j in range(n) if all(row[j] in gold_columns[i] for row in pred_rows)] for i in range(n)]
    contents = [tuple(row[j] for row in pred_rows) for j in range(n)]
    same_as_earlier = [[k for k in range(j) if contents[k] == contents[j]] for j in range(n)]
    perm, used = [], set()

    def extend(i):
        if i == n:
            yield tuple(perm)
            return
        for j in allowed[i]:
            if j not in used and all(k in used for k in same_as_earlier[j]):
                perm.append(j), used.add(j)
                yield from extend(i + 1)
                perm.pop(), used.discard(j)
    return extend(0)


def results_equal(gold_rows, pred_rows, order_matters):
    """test-suite-sql-eval's result_eq: the same rows up to a permutation of the columns, as a multiset or,
    when the gold has ORDER BY, in order. Values compare as Python values (3 == 3.0)."""
    if not gold_rows and not pred_rows:
        return True
    if len(gold_rows) != len(pred_rows) or len(gold_rows[0]) != len(pred_rows[0]):
        return False
    g_keys, p_keys = [_row_key(r) for r in gold_rows], [_row_key(r) for r in pred_rows]
    if (g_keys != p_keys) if order_matters else (set(g_keys) != set(p_keys)):
        return False
    for count, perm in enumerate(column_permutations(gold_rows, pred_rows)):
        if count >= MAX_PERMUTATIONS:
            raise SQLFailure(f"more than {MAX_PERMUTATIONS} column orders to try")
        permuted = [tuple(row[j] for j in perm) for row in pred_rows]
        if order_matters and permuted == gold_rows:
            return True
        if not order_matters and Counter(permuted) == Counter(gold_rows):
            return True
    return False


def database_files(db_dir, db_id):
    """Every '*.sqlite' file of <db_dir>/<db_id>/, sorted: Spider's one database, or test-suite-sql-eval's
    several variants of it (a prediction must match the gold on all)."""
    folder = os.path.join(db_dir, db_id)
    if not db_id or not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if ".sqlite" in f]


def spider_variants(prediction):
    """{'raw': the whole prediction, 'clean': cut at the first ';'} (the paper's A.9), both stripped."""
    return {"raw": prediction.strip(), "clean": prediction.split(";")[0].strip()}


def exec_match(prediction, gold_rows, files, order_matters, max_steps):
    """(1.0 or 0.0, why it is 0 or None, whether the safety net stopped it)."""
    pred = postprocess_sql(remove_distinct(prediction))
    try:
        same = all(results_equal(rows, run_sql(f, pred, max_steps, max_rows=len(rows)), order_matters)
                   for f, rows in zip(files, gold_rows))
        return float(same), None, False
    except SQLFailure as e:
        return 0.0, str(e), isinstance(e, SQLUndecided)


def score_spider(prediction, item, seed=0, db_dir=None, tables_path=None, max_steps=SQL_MAX_STEPS):
    """Execution match and exact-set match, each on the raw prediction and on the prediction cut at the
    first ';'. All None when the database is absent; a metric is None with 'gold_error' when the gold does
    not run (exec) or parse (exact_set) here, so the item cannot be scored on it. Zeros get a 'reason'."""
    scores = dict.fromkeys(METRICS["spider"])
    files = database_files(db_dir or "", item.get("db_id") or "")
    if not files:
        return scores
    variants, notes, reasons = spider_variants(prediction), [], []
    gold = postprocess_sql(remove_distinct(item["output"].strip()))
    try:
        gold_rows = [run_sql(f, gold, max_steps) for f in files]
    except SQLFailure as e:
        notes.append(f"gold query: {e}")
    else:
        for name, text in variants.items():
            scores[f"exec_{name}"], why, undecided = exec_match(text, gold_rows, files, "order by" in gold.lower(), max_steps)
            if why:
                reasons.append(f"exec_{name}: {why}")
            if undecided:
                scores.setdefault("undecided", []).append(f"exec_{name}")
    try:
        spider_exact.parse(item["output"], spider_exact.load_schema(files[0]))
    except spider_exact.Unparsable as e:
        notes.append(f"gold not parsed for exact-set match: {e}")
    else:
        for name, text in variants.items():
            scores[f"exact_set_{name}"], why = spider_exact.exact_set_match(text, item["output"], files[0],
                                                                             item["db_id"], tables_path)
            reasons += [f"exact_set_{name}: {why}"] if why and not scores[f"exact_set_{name}"] else []
    if notes:
        scores["gold_error"] = "; ".join(notes)
    if reasons:
        scores["reason"] = "; ".join(reasons)
    return scores


# -----------------------------------------------------------------------------
# Django


ASCII_WHITESPACE = " \t\n\r\f\v"  # Python source's whitespace; a no-break space in code is a syntax error


def collapse_ws(text):
    return re.sub(f"[{ASCII_WHITESPACE}]+", " ", text).strip(ASCII_WHITESPACE)


def score_django(prediction, item, seed=0):
    """exact: equal after stripping. ws_prefix: with whitespace runs (ASCII whitespace, Python's) collapsed, the prediction is the gold
    or the gold followed by more tokens; the gold must end at a token boundary, which in Django's
    space-tokenised code (`return x . y`) is a space, so `return xy` is no prefix match of `return x`.
    category (Table 5): exact / stopping_artifact (correct code, then trailing tokens) / content_error."""
    exact = prediction.strip(ASCII_WHITESPACE) == item["output"].strip(ASCII_WHITESPACE)
    pred, gold = collapse_ws(prediction), collapse_ws(item["output"])
    prefix = pred == gold or (bool(gold) and pred.startswith(gold + " "))
    category = "exact" if exact else ("stopping_artifact" if prefix else "content_error")
    return {"exact": float(exact), "ws_prefix": float(prefix or exact), "category": category}


# -----------------------------------------------------------------------------
# dispatch and summary


def score(task, prediction, item, seed=0, db_dir=None, tables_path=None, max_steps=SQL_MAX_STEPS):
    """The scores of one prediction; never raises for any prediction text. A failure inside a scorer gives
    every metric 0 and 'scorer_error' (the exception and where it happened)."""
    kind = TASK_SCORER.get(task)
    if kind is None:
        raise ValueError(f"no scorer for task {task!r}; tasks: {', '.join(TASK_SCORER)}")
    try:
        if kind == "spider":
            return score_spider(prediction, item, seed, db_dir, tables_path, max_steps)
        return {"gsm8k": score_gsm8k, "regex": score_regex, "django": score_django}[kind](prediction, item, seed)
    except Exception as e:  # a scorer bug must not end the run: 0, with the evidence in the record
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        return {**dict.fromkeys(METRICS[kind], 0.0), "scorer_error": f"{type(e).__name__} at {where}: {str(e)[:300]}"}


def score_generation(task, text, item, input_label, use_chat=False, seed=0, db_dir=None, tables_path=None,
                     max_steps=SQL_MAX_STEPS):
    """(prediction, notes, scores) of one generated text (cut at its stop token): the prediction read from it
    (read_prediction) and its scores (score). The one way a generation is scored: evaluate.py's records and
    the decoding comparison (replication/decoding.py) both come from it."""
    prediction, notes = read_prediction(task, text, input_label, use_chat)
    return prediction, notes, score(task, prediction, item, seed, db_dir, tables_path, max_steps)


NOTE_COUNTS = {"gold_error": "gold_errors", "scorer_error": "scorer_errors"}


def summarize(records):
    """Mean of every numeric metric over the records that have it (with '<metric>_n' when fewer than all),
    the fractions of each category, and counts: undecided items per metric, gold queries that do not run,
    scorer failures, outputs cut at a next exemplar, generations with mask tokens left, empty predictions."""
    summary = {"n": len(records)}
    scores = [r["scores"] for r in records]
    for key in sorted({k for s in scores for k, v in s.items() if isinstance(v, float) or v is None}):
        values = [s[key] for s in scores if isinstance(s.get(key), float)]
        if values:
            summary[key] = sum(values) / len(values)
            if len(values) != len(records):
                summary[f"{key}_n"] = len(values)
    categories = [s["category"] for s in scores if "category" in s]
    for cat, n in sorted(Counter(categories).items()):
        summary[f"category/{cat}"] = n / len(categories)
    for metric, n in sorted(Counter(m for s in scores for m in s.get("undecided", ())).items()):
        summary[f"{metric}_undecided"] = n
    for note, name in NOTE_COUNTS.items():
        if any(note in s for s in scores):
            summary[name] = sum(note in s for s in scores)
    for flag in ("cut_at_exemplar", "exemplar_follows", "masks_left"):  # records that carry the note
        if any(r.get(flag) for r in records):
            summary[flag] = sum(bool(r.get(flag)) for r in records)
    empty = sum(not str(r.get("prediction", "x")).strip() for r in records)
    if empty:
        summary["empty_outputs"] = empty
    if any("gold_language" in s for s in scores):
        summary.update(regex_floors(scores))
    return summary


def regex_floors(scores):
    """NL-RX beside the overall means: how many golds denote the empty language or every string, each
    metric on the other ('nontrivial') golds, and the two constant answers' scores on all items and on the
    non-trivial ones ('floor/<answer>/<metric>', 'nontrivial/floor/<answer>/<metric>')."""
    out = {f"gold_language/{kind}": n for kind, n in sorted(Counter(s.get("gold_language") for s in scores
                                                                         if "gold_language" in s).items())}
    nontrivial = [s for s in scores if s.get("gold_language") == "other"]
    out["nontrivial/n"] = len(nontrivial)
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    with_floor = [s for s in scores if "floor" in s]
    for metric in METRICS["regex"]:
        out[f"nontrivial/{metric}"] = mean([s[metric] for s in nontrivial])
        for answer in CONSTANT_ANSWERS:
            out[f"floor/{answer}/{metric}"] = mean([s["floor"][answer][metric] for s in with_floor])
            out[f"nontrivial/floor/{answer}/{metric}"] = mean([s["floor"][answer][metric] for s in nontrivial])
    return out
