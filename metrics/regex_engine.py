r"""
A regex engine for NL-RX's dk.brics syntax, built so that no input can crash it, hang it, or make its
answer depend on the machine: every answer is a function of the inputs alone.

  text --parse--> term (hash-consed ints in an Engine) --derivative(term, char)--> term    (Brzozowski)
  matches(term, s):   derivatives along s, accept when the last term is nullable
  explore(term):      the derivative automaton (states = terms, edges = character classes)
  equivalent(a, b):   walk pairs of derivatives; a pair that disagrees on acceptance is a counterexample

Why derivatives: they never backtrack, and the intersection (&) and complement (~) of NL-RX's targets
come for free. Why an Engine per question: the work is counted (every term built and every derivative
taken costs one unit) and bounded by `budget`; past it the engine raises Undecided, never a wrong answer,
and because the cache lives in the Engine the count never depends on what was scored before. No wall
clock anywhere. Nesting deeper than MAX_DEPTH, repetition counts above MAX_REPEAT and ranges wider than
MAX_RANGE are Undecided too: they are legal regexes this engine declines to build, not syntax errors.

Syntax (the dk.brics automaton library the NL-RX authors used; Locascio et al. 2016,
github.com/nicholaslocascio/deep-regex): | (lowest) < & < concatenation < postfix * + ? {n} {n,} {n,m}
< prefix ~ (highest), so ~(dog)(.*) is (~(dog))(.*). '.' is any character, [..] / [^..] classes with
ranges, '\' escapes the next character, so '\b' is the literal letter b (NL-RX's "words with" targets use
\b...\b; gold and prediction are read alike). Every other character is itself, operators included where
dk.brics reads a character (see _Parser). A regex matches a whole line.
"""

import random

MAX_DEPTH = 100  # nested groups; NL-RX targets nest at most about 10 deep
MAX_TERM_DEPTH = 250  # nesting of built terms (groups, stacked postfix operators): bounds the recursion
MAX_REPEAT = 1000  # n and m of {n,m}
MAX_RANGE = 1000  # characters in one [a-z] range
BUDGET = 1_000_000  # work units per question: about 1 s of this CPU; the hardest real NL-RX gold needs 244,000

# term kinds
EMPTY_K, EPS_K, SET_K, CAT_K, OR_K, AND_K, STAR_K, NOT_K = range(8)
OTHER = None  # the character class of every character no regex in the question mentions


class RegexError(ValueError):
    """The text is not a regex in this syntax (a definite 'no match' for scoring)."""


class Undecided(Exception):
    """The work budget or a size limit ran out before the answer was known (neither yes nor no)."""


class Engine:
    """Terms, the derivative cache and the work counter of one question. A term is an int; kind[t],
    args[t] and nullable[t] describe it. Equal structures get the same int (hash-consing), so equality of
    terms is equality of ints and a hash never walks a tree."""

    def __init__(self, budget=BUDGET):
        self.budget, self.work = budget, 0
        self.kind, self.args, self.nullable, self.depth = [], [], [], []
        self.ids, self.cache = {}, {}
        self.EMPTY = self._make(EMPTY_K, (), False)  # noqa: N806 (constants of this engine)
        self.EPS = self._make(EPS_K, (), True)
        self.ANY = self.chars((), negated=True)
        self.ALL = self.star(self.ANY)  # every string

    def charge(self, units=1):
        self.work += units
        if self.work > self.budget:
            raise Undecided(f"work budget of {self.budget} units spent")

    def reset_budget(self):
        """A fresh budget for the next metric; the cache (and so the count) carries over deterministically."""
        self.work = 0

    def _make(self, kind, args, nullable):
        key = (kind, args)
        t = self.ids.get(key)
        if t is None:
            self.charge(1 + (len(args) if kind in (OR_K, AND_K) else 0))
            depth = self._depth(kind, args)
            if depth > MAX_TERM_DEPTH:
                raise Undecided(f"terms nested deeper than {MAX_TERM_DEPTH}")
            t = self.ids[key] = len(self.kind)
            self.kind.append(kind), self.args.append(args), self.nullable.append(nullable), self.depth.append(depth)
        return t

    def _depth(self, kind, args):
        """How deep derivative() recurses into a term: a CAT's tail is walked by a loop, not a call."""
        if kind in (EMPTY_K, EPS_K, SET_K):
            return 1
        if kind == CAT_K:
            return max(self.depth[args[0]] + 1, self.depth[args[1]])
        return 1 + max(self.depth[x] for x in args)

    # --- smart constructors: keep terms small and canonical ---

    def chars(self, chars, negated=False):
        return self._make(SET_K, (negated, frozenset(chars)), False)

    def cat(self, a, b):
        """a then b, right-associated: a CAT's head is never a CAT, so walks along a sequence are loops."""
        if a == self.EMPTY or b == self.EMPTY:
            return self.EMPTY
        heads = []
        while self.kind[a] == CAT_K:
            heads.append(self.args[a][0])
            a = self.args[a][1]
        heads.append(a)
        for h in reversed(heads):
            if h != self.EPS:
                b = h if b == self.EPS else self._make(CAT_K, (h, b), self.nullable[h] and self.nullable[b])
        return b

    def _flat(self, kind, items):
        flat = set()
        for r in items:
            flat |= self.args[r] if self.kind[r] == kind else {r}
        return flat

    def union(self, *items):
        flat = self._flat(OR_K, items)
        flat.discard(self.EMPTY)
        if self.ALL in flat:
            return self.ALL
        if len(flat) <= 1:
            return flat.pop() if flat else self.EMPTY
        return self._make(OR_K, frozenset(flat), any(self.nullable[x] for x in flat))

    def inter(self, *items):
        flat = self._flat(AND_K, items)
        if self.EMPTY in flat:
            return self.EMPTY
        flat.discard(self.ALL)
        if len(flat) <= 1:
            return flat.pop() if flat else self.ALL
        return self._make(AND_K, frozenset(flat), all(self.nullable[x] for x in flat))

    def star(self, r):
        if r in (self.EMPTY, self.EPS):
            return self.EPS
        return r if self.kind[r] == STAR_K else self._make(STAR_K, (r,), True)

    def complement(self, r):
        return self.args[r][0] if self.kind[r] == NOT_K else self._make(NOT_K, (r,), not self.nullable[r])

    def repeat(self, r, low, high):
        """r{low,high}; high None = unbounded. Built from the right, so each step is one constructor call."""
        if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
            raise Undecided(f"repetition {{{low},{high}}} above {MAX_REPEAT}")
        if high is not None and high < low:
            return self.EMPTY  # dk.brics BasicOperations.repeat: min > max is the empty language
        out = self.star(r) if high is None else self.EPS
        optional = self.union(r, self.EPS)
        for _ in range(0 if high is None else high - low):
            out = self.cat(optional, out)
        for _ in range(low):
            out = self.cat(r, out)
        return out

    # --- derivatives ---

    def derivative(self, r, c):
        """The term for {s : c + s in L(r)}; c is a character or OTHER."""
        self.charge()
        key = (r, c)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        kind, args = self.kind[r], self.args[r]
        if kind in (EMPTY_K, EPS_K):
            out = self.EMPTY
        elif kind == SET_K:
            out = self.EPS if (c in args[1]) != args[0] else self.EMPTY
        elif kind == CAT_K:  # d(h t) = d(h) t | d(t) if h is nullable; a loop along the sequence
            parts, rest = [], r
            while self.kind[rest] == CAT_K:
                head, tail = self.args[rest]
                parts.append(self.cat(self.derivative(head, c), tail))
                if not self.nullable[head]:
                    break
                rest = tail
            else:
                parts.append(self.derivative(rest, c))
            out = self.union(*parts)
        elif kind == OR_K:
            out = self.union(*(self.derivative(x, c) for x in sorted(args)))
        elif kind == AND_K:
            out = self.inter(*(self.derivative(x, c) for x in sorted(args)))
        elif kind == STAR_K:
            out = self.cat(self.derivative(args[0], c), r)
        else:  # NOT
            out = self.complement(self.derivative(args[0], c))
        self.cache[key] = out
        return out

    # --- character classes ---

    def mentioned_sets(self, *roots):
        """Every character set in the terms, found with an explicit stack (no recursion)."""
        seen, sets, todo = set(), set(), list(roots)
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            kind, args = self.kind[t], self.args[t]
            if kind == SET_K:
                sets.add(args[1])
            elif kind in (CAT_K, STAR_K, NOT_K):
                todo.extend(args)
            elif kind in (OR_K, AND_K):
                todo.extend(args)
        return sets

    def char_classes(self, *roots):
        """Partition the characters into classes no term can tell apart: {representative: members}, in a
        fixed order. Characters no term mentions form one class, represented by OTHER (with no members)."""
        sets = sorted(self.mentioned_sets(*roots), key=sorted)
        self.charge(sum(len(s) for s in sets))
        groups = {}
        for ch in sorted(set().union(*sets)):
            groups.setdefault(tuple(ch in s for s in sets), []).append(ch)
        classes = {members[0]: members for members in groups.values()}
        classes[OTHER] = []
        return classes

    # --- questions ---

    def matches(self, r, text, classes_index):
        """Whether r matches the whole of text; classes_index maps a character to its class representative."""
        for ch in text:
            r = self.derivative(r, classes_index.get(ch, OTHER))
            if r == self.EMPTY:
                return False
        return self.nullable[r]

    def explore(self, start, reps):
        """The derivative automaton reachable from start: {state: {rep: next state}}."""
        edges, todo = {}, [start]
        while todo:
            s = todo.pop()
            if s in edges:
                continue
            edges[s] = {c: self.derivative(s, c) for c in reps}
            todo.extend(t for t in edges[s].values() if t not in edges)
        return edges

    def equivalent(self, a, b):
        """Whether a and b denote the same language (a depth-first walk over pairs of derivatives)."""
        if a == b:
            return True
        reps = list(self.char_classes(a, b))
        seen, todo = set(), [(a, b)]
        while todo:
            pair = todo.pop()
            if pair in seen:
                continue
            if self.nullable[pair[0]] != self.nullable[pair[1]]:
                return False
            seen.add(pair)
            self.charge()
            todo.extend((self.derivative(pair[0], c), self.derivative(pair[1], c)) for c in reps)
        return True

    # --- parsing ---

    def parse(self, text):
        """The term of a regex text. Raises RegexError (not a regex) or Undecided (a size limit)."""
        return _Parser(self, text).parse()


class _Parser:
    """Recursive descent that follows dk.brics.automaton's RegExp parser method for method (RegExp.java:
    parseUnionExp, parseInterExp, parseConcatExp, parseRepeatExp, parseComplExp, parseCharClassExp,
    parseCharClasses, parseCharClass, parseSimpleExp, parseCharExp), with loops where it recurses to the
    right and nesting bounded by MAX_DEPTH. What that grammar implies, and this parser therefore does:
      - a concatenation always takes at least one item, and an item that is no operator's start is a
        character read by parseCharExp: an optional '\\', then *any* next character. So an operator in
        atom position is itself: '(*)' is the string '*', '(|a)' is '|a', '~)' is the complement of ')',
        a stray ']' or '}' is itself; only the end of the text there is an error;
      - a reversed class range such as [a-9] or [A--Z]'s 'A--' is the empty set: BasicAutomata.makeCharRange
        adds no transition when min > max; likewise {n,m} with m < n is the empty language
        (BasicOperations.repeat returns makeEmpty when min > max);
      - after a complete regex, anything left over (a ')' that closes nothing) is an error, as RegExp's
        constructor throws "end-of-string expected".
    dk.brics' optional syntax (# empty, @ any string, "..." strings, <..> intervals) is read as literal
    characters: deep-regex's evaluation jar is not published with its flags, and no NL-RX target uses them."""

    def __init__(self, engine, text):
        self.e, self.text, self.pos, self.depth = engine, text, 0, 0

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self):
        if self.pos >= len(self.text):
            raise RegexError("unexpected end of regex")
        self.pos += 1
        return self.text[self.pos - 1]

    def match(self, c):
        if self.peek() == c:
            self.pos += 1
            return True
        return False

    def parse(self):
        r = self.union()
        if self.pos != len(self.text):
            raise RegexError(f"end of regex expected at {self.pos}, found {self.text[self.pos]!r}")
        return r

    def union(self):  # parseUnionExp: inter ('|' union)?
        items = [self.inter()]
        while self.match("|"):
            items.append(self.inter())
        return self.e.union(*items)

    def inter(self):  # parseInterExp: concat ('&' inter)?
        items = [self.concat()]
        while self.match("&"):
            items.append(self.concat())
        return self.e.inter(*items)

    def concat(self):  # parseConcatExp: repeat, then more while the next character is not ')', '|' or '&'
        parts = [self.repeat()]
        while self.peek() is not None and self.peek() not in ")|&":
            parts.append(self.repeat())
        out = self.e.EPS
        for p in reversed(parts):
            out = self.e.cat(p, out)
        return out

    def number(self):
        digits = ""
        while self.peek() is not None and self.peek() in "0123456789":
            digits += self.take()
            if len(digits) > 9:
                raise Undecided("repetition count above 10^9")
        if not digits:
            raise RegexError(f"expected a number at {self.pos}")
        return int(digits)

    def repeat(self):  # parseRepeatExp
        r = self.complement()
        while self.peek() is not None and self.peek() in "?*+{":
            op = self.take()
            if op == "*":
                r = self.e.star(r)
            elif op == "+":
                r = self.e.cat(r, self.e.star(r))
            elif op == "?":
                r = self.e.union(r, self.e.EPS)
            else:
                low = self.number()
                high = low
                if self.match(","):
                    high = self.number() if self.peek() is not None and self.peek() in "0123456789" else None
                if not self.match("}"):
                    raise RegexError(f"expected '}}' at {self.pos}")
                r = self.e.repeat(r, low, high)
        return r

    def complement(self):  # parseComplExp: '~' complement | class
        n = 0
        while self.match("~"):
            n += 1
        r = self.char_class_exp()
        for _ in range(n % 2):
            r = self.e.complement(r)
        return r

    def char_class_exp(self):  # parseCharClassExp
        if not self.match("["):
            return self.simple()
        negated = self.match("^")
        chars = self.char_class()
        while self.peek() is not None and self.peek() != "]":
            chars |= self.char_class()
        if not self.match("]"):
            raise RegexError(f"expected ']' at {self.pos}")
        return self.e.chars(chars, negated)

    def char_class(self):  # parseCharClass: c, c-] (c and '-'), or c-d (empty when d < c)
        c = self.char()
        if not self.match("-"):
            return {c}
        if self.peek() == "]":
            return {c, "-"}
        end = self.char()
        if ord(end) < ord(c):
            return set()  # BasicAutomata.makeCharRange: no transition when min > max
        if ord(end) - ord(c) >= MAX_RANGE:
            raise Undecided(f"range {c!r}-{end!r} wider than {MAX_RANGE} characters")
        self.e.charge(ord(end) - ord(c))
        return {chr(i) for i in range(ord(c), ord(end) + 1)}

    def simple(self):  # parseSimpleExp: '.', '(' ')' , '(' union ')', else a character
        if self.match("."):
            return self.e.ANY
        if self.match("("):
            if self.match(")"):
                return self.e.EPS
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise Undecided(f"groups nested deeper than {MAX_DEPTH}")
            r = self.union()
            self.depth -= 1
            if not self.match(")"):
                raise RegexError(f"expected ')' at {self.pos}")
            return r
        return self.e.chars(self.char())

    def char(self):  # parseCharExp: an optional backslash, then any character
        self.match("\\")
        return self.take()


# -----------------------------------------------------------------------------
# test strings for functional match

NLRX_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
SPARE_CHARACTERS = "#%@!?;:=/<>_" + "".join(map(chr, range(0xE000, 0xE100)))  # stand-ins for OTHER


def random_strings(n, rng, max_length=20):
    """n strings over NLRX_ALPHABET with uniform lengths 0..max_length, drawn without regard to any regex."""
    return ["".join(rng.choice(NLRX_ALPHABET) for _ in range(rng.randint(0, max_length))) for _ in range(n)]


def matching_strings(engine, gold, n, rng, max_length=30):
    """n strings the gold accepts: random walks on its automaton that only take edges from which
    acceptance is still reachable, stopping at an accepting state with probability 0.15 per step (always
    past max_length, heading for the nearest acceptance). [] when the gold accepts nothing."""
    members = engine.char_classes(gold)
    mentioned = {c for ms in members.values() for c in ms}
    members[OTHER] = [c for c in NLRX_ALPHABET + SPARE_CHARACTERS if c not in mentioned][:64]
    edges = engine.explore(gold, list(members))
    dist = {s: 0 for s in edges if engine.nullable[s]}  # steps to acceptance, by backward search
    reverse = {}
    for s, out in edges.items():
        for t in out.values():
            reverse.setdefault(t, []).append(s)
    frontier = list(dist)
    while frontier:
        nxt = []
        for t in frontier:
            for s in reverse.get(t, []):
                if s not in dist:
                    dist[s] = dist[t] + 1
                    nxt.append(s)
        frontier = nxt
    if gold not in dist:
        return []
    live = {s: [c for c, t in edges[s].items() if t in dist and members[c]] for s in dist}
    closer = {s: [c for c in live[s] if dist[edges[s][c]] < dist[s]] for s in dist}
    strings = []
    for _ in range(n):
        s, out = gold, []
        while True:
            options = live[s] if len(out) < max_length else closer[s]
            if engine.nullable[s] and (not options or rng.random() < 0.15 or len(out) >= max_length):
                break
            if not options:  # only characters outside every spare set lead on: give up on this walk
                break
            c = rng.choice(options)
            out.append(rng.choice(members[c]))
            s = edges[s][c]
        if engine.nullable[s]:
            strings.append("".join(out))
    return strings


def class_index(classes):
    """{character: its class representative} for Engine.matches."""
    return {ch: rep for rep, members in classes.items() for ch in members}


def seeded_rng(*parts):
    """A random.Random seeded by the parts' text: the same on every machine and Python run (no hash())."""
    return random.Random("\x00".join(map(str, parts)))
