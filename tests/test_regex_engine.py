"""regex_engine.py: dk.brics semantics on crafted pairs, whole-line matching, the test strings, and the
inputs that once crashed or hung the scorer (each kept as a regression case)."""

import time

import pytest

from metrics import regex_engine as R


def equivalent(a, b, budget=R.BUDGET):
    e = R.Engine(budget)
    return e.equivalent(e.parse(a), e.parse(b))


def matches(regex, text):
    e = R.Engine()
    r = e.parse(regex)
    return e.matches(r, text, R.class_index(e.char_classes(r)))


@pytest.mark.parametrize("a,b,same", [
    (".*(dog).*", ".*dog.*", True),
    ("(a|b)*", "(a*b*)*", True),
    ("([0-9])+", "[0-9][0-9]*", True),
    ("(dog){2,}", "dogdog(dog)*", True),
    ("(dog){1,3}", "dog|dogdog|dogdogdog", True),
    ("~(dog)(.*)", "(~(dog))(.*)", True),  # prefix ~ binds tighter than concatenation
    ("~(.*dog.*)", "~(.*(dog).*)", True),
    ("~~(dog)", "dog", True),
    ("[AEIOUaeiou]", "[aeiouAEIOU]", True),
    ("(.*[A-Z].*)&(.*[0-9].*)", "(.*[A-Z].*[0-9].*)|(.*[0-9].*[A-Z].*)", True),
    ("a|b&c", "a|(b&c)", True),  # & binds tighter than |
    ("ab&ac", "(ab)&(ac)", True),  # ... and looser than concatenation: the language is empty
    ("ab&ac", "a&b", True),
    ("\\b(dog)\\b", "b(dog)b", True),  # '\b' is the letter b, as in dk.brics
    (".*(dog).*", ".*(dog)", False),
    ("[a-z]", "[A-Z]", False),
    ("(dog){3}", "(dog){3,}", False),
    ("~(a)", "a", False),
])
def test_equivalence(a, b, same):
    assert equivalent(a, b) is same
    assert equivalent(b, a) is same


def test_matching_is_whole_line():
    assert matches("(.*[0-9].*){3,}", "a1b2c3") and not matches("(.*[0-9].*){3,}", "a1b2")
    assert matches("dog", "dog") and not matches("dog", "dogs")
    assert matches("~(.*dog.*)", "cat") and not matches("~(.*dog.*)", "hotdogs")
    assert matches("[^a-c]x", "zx") and not matches("[^a-c]x", "bx")
    assert matches(".", "\u2603")  # a character no regex mentions still matches '.'


def test_matching_strings_are_accepted_and_reproducible():
    e = R.Engine()
    gold = e.parse("(.*(dog).*)&(([A-Z]).*)")
    strings = R.matching_strings(e, gold, 50, R.seeded_rng(1, "x"))
    index = R.class_index(e.char_classes(gold))
    assert len(strings) == 50 and all(e.matches(gold, s, index) for s in strings)
    again = R.Engine()
    assert strings == R.matching_strings(again, again.parse("(.*(dog).*)&(([A-Z]).*)"), 50, R.seeded_rng(1, "x"))
    assert R.matching_strings(e, e.parse("a&b"), 5, R.seeded_rng(0)) == []  # an empty language has none


def test_random_strings_are_over_the_alphabet():
    strings = R.random_strings(200, R.seeded_rng(0, "gold"))
    assert len(strings) == 200 and all(len(s) <= 20 and set(s) <= set(R.NLRX_ALPHABET) for s in strings)
    assert strings == R.random_strings(200, R.seeded_rng(0, "gold")) != R.random_strings(200, R.seeded_rng(1, "gold"))


@pytest.mark.parametrize("bad", ["(dog", "dog)", "[a-", "a{3", "a{x}", "[ab", "\\", "", "a|", "(*(dog)", "(a))"])
def test_parse_errors(bad):  # what dk.brics' RegExp constructor rejects: a missing closer, the end too early,
    with pytest.raises(R.RegexError):  # a ')' that closes nothing
        R.Engine().parse(bad)


# dk.brics reads any character in atom position as itself (parseCharExp), a reversed range as the
# empty set (BasicAutomata.makeCharRange) and {n,m} with m < n as the empty language; these were "not a regex"
@pytest.mark.parametrize("text, same_as", [
    ("(*)", "\\*"), ("*a", "\\*a"), ("a|*", "a|\\*"), ("(|a)", "\\|a"), ("a||b", "a|(\\|b)"),
    ("a]", "a\\]"), ("a}", "a\\}"), ("~)", "~(\\))"), ("~|", "~(\\|)"), ("~&a", "(~(\\&))a"),
    ("[a-9]", "a&b"), ("[z-a]", "a&b"), ("[a--]", "a&b"), ("[A--Z]", "Z"), ("[^a-0]", "."), ("x[a-9]|y", "y"),
    ("a{5,3}", "a&b"), ("[]a]", "\\]|a"), ("[a-]", "a|\\-"),
])
def test_dk_brics_readings(text, same_as):
    e = R.Engine()
    assert e.equivalent(e.parse(text), e.parse(same_as))


# --- inputs that once raised RecursionError or hung; each gets an answer now ---

def test_long_concatenations_are_loops_not_recursion():
    for regex, length in [("((a){50}){50}", 2500), ("(.{50}){50}", 2500), ("a" * 995, 995)]:
        e = R.Engine()
        r = e.parse(regex)
        assert e.matches(r, "a" * length, R.class_index(e.char_classes(r)))
        assert not e.matches(r, "a" * (length - 1), R.class_index(e.char_classes(r)))
        assert e.equivalent(r, e.parse(regex))
    assert equivalent("((a){50}){50}", "a{1000}a{1000}a{500}")


@pytest.mark.parametrize("evil", ["(" * 170 + "a" + ")" * 170, "a" + "*?" * 600, "a{99999}", "a{1234567890123}",
                                  "[\u0000-\uffff]"])
def test_size_limits_are_undecided_not_errors(evil):
    with pytest.raises(R.Undecided):
        R.Engine().parse(evil)


def test_deep_complement_and_nesting_within_limits():
    assert equivalent("~" * 990 + "a", "a")  # an even number of ~ cancels
    assert equivalent("~" * 991 + "a", "~a")
    assert equivalent("(" * 90 + "a" + ")" * 90, "a")


@pytest.mark.parametrize("evil", ["(a*)*b", "((a|a)*)*c", "(.*.*.*.*.*.*.*.*)*x", "(a|aa)*(a|aa)*(a|aa)*b"])
def test_backtracking_traps_match_in_linear_steps(evil):
    e = R.Engine()
    r = e.parse(evil)
    assert not e.matches(r, "a" * 5000 + "!", R.class_index(e.char_classes(r)))
    assert e.work < 100_000


def test_budget_makes_blowup_undecided_and_the_count_is_deterministic():
    # 'a' twenty characters from the end: the minimal DFA has 2^21 states
    works = []
    for _ in range(2):
        e = R.Engine(budget=50_000)
        r = e.parse("(.*a.{20})")
        with pytest.raises(R.Undecided, match="budget"):
            e.explore(r, list(e.char_classes(r)))
        works.append(e.work)
    assert works[0] == works[1] > 50_000


def test_answers_do_not_read_the_clock(monkeypatch):
    # a machine so busy that every clock read jumps an hour: the engine's answers do not change
    gold = "((.*dog.*)|(truck)){7,}"
    clock = iter(range(0, 10**9, 3600))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    e = R.Engine()
    r = e.parse(gold)
    assert e.equivalent(r, e.parse("((.*dog.*)|truck){7,}"))
    assert len(R.matching_strings(e, r, 100, R.seeded_rng(0, gold))) == 100


def test_work_does_not_depend_on_earlier_questions():
    def work_of(regex):
        e = R.Engine()
        r = e.parse(regex)
        R.matching_strings(e, r, 100, R.seeded_rng(0))
        return e.work
    first = work_of("(.*[0-9].*){3,}")
    work_of("((.*dog.*)|(truck)){7,}")
    assert work_of("(.*[0-9].*){3,}") == first
