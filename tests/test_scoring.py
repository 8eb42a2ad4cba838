"""scoring.py: GSM8K, NL-RX and Django on crafted cases (each past defect as a regression case),
hostile outputs that must get a score, the summary, and every real gold scoring 1 (../shared/data)."""

import os
from fractions import Fraction

import pytest
from conftest import SHARED, needs_shared

import data as D
from metrics import scoring as S

# --- GSM8K ---


@pytest.mark.parametrize("text,expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7),
    ("#### 1,234", 1234),
    ("The answer is $18.", 18),
    ("so the total is 5 and then 12.50 dollars.", Fraction("12.5")),
    ("#### -3\nQuestion: 99", -3),
    ("The answer is: 0.5", Fraction(1, 2)),
    ("no number here", None),
    ("#### " + "9" * 5000, None),  # past Python's digit limit: no answer, no exception
])
def test_gsm8k_extraction(text, expected):
    assert S.extract_gsm8k_answer(text) == expected


def test_gsm8k_scoring():
    item = {"output": "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"}
    assert S.score_gsm8k("48 + 24 = 72\n#### 72", item)["accuracy"] == 1.0
    assert S.score_gsm8k("The answer is 72.00", item)["accuracy"] == 1.0
    assert S.score_gsm8k("#### 71", item)["accuracy"] == 0.0
    # U+2212 (the typographic minus) was dropped, so '#### -72' written with it scored 1
    assert S.score_gsm8k("#### \u221272", item)["accuracy"] == 0.0
    assert S.score_gsm8k("#### \u221272", {"output": "#### -72"})["accuracy"] == 1.0


def test_few_shot_output_is_cut_at_the_next_exemplar():
    # the model goes on with a made-up exemplar whose '#### 5' would be scored
    item = {"output": "... #### 72"}
    generation = "48 + 24 = 72\nThe answer is 72.\n\nQuestion: How many legs?\nAnswer: 2 + 3 = 5\n#### 5"
    assert S.score_gsm8k(generation, item)["accuracy"] == 0.0
    prediction, cut = S.cut_at_next_exemplar(generation, D.TASKS["gsm8k"]["input_label"])
    assert cut and prediction == "48 + 24 = 72\nThe answer is 72.\n\n"
    assert S.score_gsm8k(prediction, item)["accuracy"] == 1.0
    assert S.cut_at_next_exemplar("#### 72", "Question") == ("#### 72", False)
    assert S.read_prediction("gsm8k", generation, "Question", use_chat=False) == (prediction, {"cut_at_exemplar": True})
    assert S.read_prediction("gsm8k", generation, "Question", use_chat=True) == (generation, {})
    # a generation is scored as read: the cut one right, the same text from a chat model (no cut) wrong
    assert S.score_generation("gsm8k", generation, item, "Question") == \
        (prediction, {"cut_at_exemplar": True}, {"accuracy": 1.0})
    assert S.score_generation("gsm8k", generation, item, "Question", use_chat=True) == (generation, {}, {"accuracy": 0.0})


@pytest.mark.parametrize("task, label, text", [
    ("spider", "Question", "SELECT name FROM city\n\nQuestion: how many?\nSQL: SELECT count(*) FROM city"),
    ("django", "Pseudo-code", "return x\n\nPseudo-code: call f.\nPython: f()"),
    ("nlrx", "Description", ".*dog.*\n\nDescription: lines with cat"),
])
def test_the_exemplar_cut_is_gsm8k_only(task, label, text):
    # cut everywhere, a stopping artifact became a raw execution match of 1 and a Django
    # 'exact'; raw means what the model wrote up to EOS, and the count is kept
    assert S.read_prediction(task, text, label, use_chat=False) == (text, {"exemplar_follows": True})
    assert S.read_prediction(task, "SELECT 1", label, use_chat=False) == ("SELECT 1", {})
    django = S.score_django("return x\n\nPseudo-code: call f.\nPython: f()", {"output": "return x"})
    assert django["category"] == "stopping_artifact" and django["exact"] == 0.0
    summary = S.summarize([{"prediction": text, "exemplar_follows": True, "scores": {}}, {"prediction": "a", "scores": {}}])
    assert summary["exemplar_follows"] == 1


# --- NL-RX ---


def test_regex_summary_shows_nontrivial_golds_and_constant_floors():
    items = [("a&b", "[a-9]"), ("dog", "dog"), (".*", ".*(.*)"), ("x", "(dog)|x")]  # empty, other, all, other
    records = [{"prediction": p, "scores": S.score("nlrx", p, {"output": g})} for p, g in items]
    assert [r["scores"]["gold_language"] for r in records] == ["empty", "other", "all", "other"]
    assert records[0]["scores"]["floor"]["empty_language"] == {"exact": 0.0, "functional": 1.0,
                                                               "functional_random200": 1.0, "dfa": 1.0}
    summary = S.summarize(records)
    assert summary["dfa"] == 0.75 and summary["nontrivial/dfa"] == 0.5 and summary["nontrivial/n"] == 2
    assert (summary["gold_language/empty"], summary["gold_language/all"], summary["gold_language/other"]) == (1, 1, 2)
    assert summary["floor/empty_language/dfa"] == summary["floor/all_strings/dfa"] == 0.25
    assert summary["nontrivial/floor/empty_language/dfa"] == summary["nontrivial/floor/all_strings/dfa"] == 0.0
    # random strings rarely match '(dog)|x' or 'dog': the literal 200-random reading credits the empty answer
    assert summary["nontrivial/floor/empty_language/functional_random200"] == 1.0


def test_regex_metrics():
    full = {"exact": 1.0, "functional": 1.0, "functional_random200": 1.0, "dfa": 1.0}
    assert S.regex_scores(" .*dog.* ", ".*dog.*") == full
    assert S.regex_scores(".*(dog).*", ".*dog.*") == {**full, "exact": 0.0}
    # random strings over letters and digits almost never hold 'dog' or 'cat': the literal reading of
    # '200 random strings' passes this wrong regex, the 100 + 100 draw does not
    assert S.regex_scores(".*cat.*", ".*dog.*") == \
        {"exact": 0.0, "functional": 0.0, "functional_random200": 1.0, "dfa": 0.0}
    assert S.regex_scores(".*([0-9]).*", ".*dog.*") == \
        {"exact": 0.0, "functional": 0.0, "functional_random200": 0.0, "dfa": 0.0}
    not_regex = S.regex_scores("garbage((", ".*dog.*")
    assert not_regex["functional"] == not_regex["dfa"] == 0.0 and "not a regex" in not_regex["reason"]


def test_regex_scores_are_a_function_of_prediction_gold_and_seed():
    gold, prediction = "(.*[0-9].*)&(.*[A-Z].*)", "(.*[A-Z].*)&(.*[0-9].*)"
    assert S.regex_scores(prediction, gold, seed=3) == S.regex_scores(prediction, gold, seed=3)
    # this gold against itself once scored 1 on an idle machine and 0 on a busy one
    gold = "((.*dog.*)|(truck)){7,}"
    assert S.regex_scores(gold, gold) == \
        {"exact": 1.0, "functional": 1.0, "functional_random200": 1.0, "dfa": 1.0}


def test_undecided_is_reported_not_silently_zero(monkeypatch):
    monkeypatch.setattr(S.rx, "BUDGET", 20_000)
    scores = S.score_regex("(.*a.{20})|(b&c)", {"output": "(.*a.{20})"})  # equal languages, 2^21-state automata
    assert scores["dfa"] == scores["functional"] == 0.0 and scores["undecided"] == ["functional", "dfa"]
    assert scores["functional_random200"] == 1.0 and "budget" in scores["reason"]
    summary = S.summarize([{"scores": scores}, {"scores": S.score_regex("a", {"output": "a"})}])
    assert summary["dfa_undecided"] == summary["functional_undecided"] == 1 and summary["dfa"] == 0.5


@pytest.mark.parametrize("prediction", ["((a){50}){50}", "(.{50}){50}", "(" * 170, "~" * 990, "a" * 995,
                                        "a" + "*?" * 600, "[\u0000-\uffff]", "a{99999999999}", "\x00\ud800",
                                        "(" * 5000 + ")" * 5000, "\\"])
def test_hostile_regexes_get_a_score(prediction):
    # each of these once raised RecursionError and ended the whole evaluation
    scores = S.score("nlrx", prediction, {"output": ".*(dog).*"})
    assert set(scores) >= set(S.METRICS["regex"]) and "scorer_error" not in scores


def test_hostile_regexes_stay_bounded_in_a_child_under_a_memory_cap():
    # any output is scored in bounded memory; a child under a 1 GB address-space cap scores the
    # hardest constructed cases (budget exhausted) and the hostile parses, and ends normally
    import json
    import subprocess
    import sys
    cases = [("(.*a.{20})|(b&c)", "(.*a.{20})"), ("(.*[a-c].{9})&(.*[b-d].{9})|(x&y)", "(.*[a-c].{9})&(.*[b-d].{9})"),
             ("(" * 5000 + ")" * 5000, ".*dog.*"), ("[\u0000-\uffff]{999}", ".*dog.*")]
    script = ("import json, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); from metrics import scoring as S\n"
              "for p, g in json.loads(sys.argv[1]):\n"
              "    print(json.dumps(S.score('nlrx', p, {'output': g})), flush=True)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(cases) and not any("scorer_error" in r for r in results)
    assert results[0]["undecided"] == results[1]["undecided"] == ["functional", "dfa"]


# --- Django ---


@pytest.mark.parametrize("prediction,gold,category", [
    ("from django . conf import settings", "from django . conf import settings", "exact"),
    ("from  django . conf import settings\nimport os", "from django . conf import settings", "stopping_artifact"),
    ("return x\nreturn y", "return x", "stopping_artifact"),
    ("from django import settings", "from django . conf import settings", "content_error"),
    # a character prefix is not a token prefix
    ("return xy", "return x", "content_error"),
    ("x = 10", "x = 1", "content_error"),
    ("password += 1", "pass", "content_error"),
    ("", "pass", "content_error"),
])
def test_django_decomposition(prediction, gold, category):
    scores = S.score_django(prediction, {"output": gold})
    assert scores["category"] == category
    assert scores["ws_prefix"] == float(category != "content_error")
    assert scores["exact"] == float(category == "exact")


def test_django_no_break_space_is_not_whitespace():
    # 'return\u00a0x' (a syntax error in Python) counted as a stopping artifact of 'return x'
    scores = S.score_django("return\u00a0x", {"output": "return x"})
    assert scores == {"exact": 0.0, "ws_prefix": 0.0, "category": "content_error"}
    assert S.score_django("return x \u00a0", {"output": "return x"})["category"] == "stopping_artifact"
    assert S.score_django(" return x\n", {"output": "return x"})["category"] == "exact"


def test_django_summary():
    item = {"output": "from django . conf import settings"}
    summary = S.summarize([{"scores": S.score_django(p, item)} for p in
                           ["from django . conf import settings", "x", "from django . conf import settings !"]])
    assert summary["exact"] == pytest.approx(1 / 3) and summary["ws_prefix"] == pytest.approx(2 / 3)
    assert summary["category/content_error"] == pytest.approx(1 / 3)


# --- any output gets a score ---

HOSTILE = ["", " ", "\x00" * 100, "\ud800\udfff", "🙂" * 1000, "#### " + "1" * 10000, "(" * 10000, "; DROP TABLE x",
           "a" * 100_000, "\n" * 1000]


@pytest.mark.parametrize("task", ["gsm8k", "nlrx", "django", "spider"])
def test_no_output_raises(task):
    item = {"output": {"gsm8k": "#### 1", "nlrx": ".*dog.*", "django": "pass", "spider": "SELECT 1"}[task],
            "db_id": "absent"}
    for text in HOSTILE:
        scores = S.score(task, text, item)
        assert set(S.METRICS[S.TASK_SCORER[task]]) <= set(scores) and "scorer_error" not in scores


def test_a_failing_scorer_scores_zero_with_its_reason(monkeypatch):
    def broken(prediction, item, seed=0):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(S, "score_regex", broken)
    scores = S.score("nlrx", "x", {"output": "x"})
    assert scores["exact"] == scores["dfa"] == 0.0
    assert scores["scorer_error"].startswith("RecursionError at test_scoring.py:")
    summary = S.summarize([{"scores": scores}, {"scores": {"exact": 1.0}, "cut_at_exemplar": True}])
    assert summary["scorer_errors"] == 1 and summary["exact"] == 0.5 and summary["cut_at_exemplar"] == 1


def test_unknown_task_is_a_named_error():
    with pytest.raises(ValueError, match="no scorer for task 'mmlu'"):
        S.score("mmlu", "x", {"output": "x"})


# --- the real release files: every gold answer scores 1 on every metric ---


@needs_shared
def test_real_gsm8k_gold_scores_one():
    items = D.load_task("gsm8k", "eval", os.path.join(SHARED, "gsm8k", "openai"))
    assert len(items) == 1319 and all(S.score_gsm8k(x["output"], x)["accuracy"] == 1.0 for x in items)


@needs_shared
def test_real_django_gold_scores_one():
    items = D.load_task("django", "eval", os.path.join(SHARED, "django"))
    assert all(S.score_django(x["output"], x) == {"exact": 1.0, "ws_prefix": 1.0, "category": "exact"} for x in items)


@needs_shared
def test_real_nlrx_gold_scores_one():
    # the scores depend on the gold string alone, so each distinct regex of the corpus is scored once
    # (NL-RX-Synth and NL-RX-Turk share their 10,000 regexes)
    regexes = set(D.read_lines(os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Synth", "targ.txt")))
    regexes |= set(D.read_lines(os.path.join(SHARED, "nl_rx", "deep_regex", "NL-RX-Turk", "targ.txt")))
    full = {"exact": 1.0, "functional": 1.0, "functional_random200": 1.0, "dfa": 1.0}
    for gold in sorted(regexes):
        assert S.regex_scores(gold, gold) == full, gold


@needs_shared
def test_real_nlrx_trivial_golds_and_floors():
    # of the first 500 LLM-JEPA test items 89 golds denote the empty language and 29 every string,
    # so the constant empty-language answer scores DFA 89/500 = 0.178; the summary shows it
    items = D.load_task("nlrx", "eval", os.path.join(SHARED, "nl_rx", "llm_jepa"))[:500]
    records = [{"prediction": "", "scores": S.score("nlrx", "", x)} for x in items]
    summary = S.summarize(records)
    assert summary["gold_language/empty"] == 89 and summary["gold_language/all"] == 29
    assert summary["nontrivial/n"] == 500 - 89 - 29 - summary.get("gold_language/undecided", 0)
    assert summary["floor/empty_language/dfa"] == pytest.approx(0.178) and summary["floor/all_strings/dfa"] == 0.058
    assert summary["nontrivial/floor/empty_language/dfa"] == summary["nontrivial/floor/all_strings/dfa"] == 0.0
    assert summary["dfa"] == 0.0 and summary["nontrivial/dfa"] == 0.0  # '' is not a regex
