"""Spider scoring: the read-only SQL sandbox, test-suite-sql-eval's execution match and Spider's
exact-set match (spider_exact.py) on crafted databases, each past defect as a regression case,
and the real dev set where ../shared/data is present (gold structures equal to the official parser's)."""

import json
import os
import re
import sqlite3

import pytest
from conftest import SHARED, needs_shared

import data as D
from metrics import scoring as S
from metrics import spider_exact as X


def make_db(folder, db_id, script):
    path = os.path.join(folder, db_id)
    os.makedirs(path, exist_ok=True)
    conn = sqlite3.connect(os.path.join(path, f"{db_id}.sqlite"))
    conn.executescript(script)
    conn.commit()
    conn.close()
    return os.path.join(path, f"{db_id}.sqlite")


SHOP = ("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER);"
        "INSERT INTO item VALUES (1, 'pen', 1.5, 3), (2, 'ink', 3.0, 3), (3, 'pad', 2.0, 5);"
        "CREATE TABLE sale (sid INTEGER, item_id INTEGER REFERENCES item(id), amount INTEGER);"
        "INSERT INTO sale VALUES (1, 1, 10), (2, 1, 5), (3, 3, 7);")


@pytest.fixture()
def db_dir(tmp_path):
    make_db(str(tmp_path / "db"), "shop", SHOP)
    return str(tmp_path / "db")


def spider(prediction, gold, db_dir, **kw):
    return S.score_spider(prediction, {"output": gold, "db_id": "shop"}, db_dir=db_dir, **kw)


ALL_ONE = {"exec_clean": 1.0, "exec_raw": 1.0, "exact_set_clean": 1.0, "exact_set_raw": 1.0}


# --- execution match: test-suite-sql-eval's semantics ---


def test_exec_match_basics(db_dir):
    gold = "SELECT name FROM item WHERE price > 1.8"
    assert spider("SELECT name FROM item WHERE price > 1.8", gold, db_dir) == ALL_ONE
    assert spider("SELECT name FROM item WHERE price >= 2", gold, db_dir)["exec_clean"] == 1.0
    assert spider("SELECT name FROM item", gold, db_dir)["exec_clean"] == 0.0
    broken = spider("SELEC nonsense", gold, db_dir)
    assert broken["exec_clean"] == 0.0 and "syntax error" in broken["reason"]
    ordered = "SELECT name FROM item ORDER BY price"
    assert spider("SELECT name FROM item ORDER BY price DESC", ordered, db_dir)["exec_clean"] == 0.0
    assert spider("SELECT name FROM item ORDER BY price", ordered, db_dir)["exec_clean"] == 1.0


def test_int_and_float_rows_are_equal_with_and_without_order_by(db_dir):
    # 3 vs 3.0 compared unequal without ORDER BY and equal with it
    assert spider("SELECT 3.0", "SELECT 3", db_dir)["exec_clean"] == 1.0
    assert spider("SELECT qty * 1.0 FROM item", "SELECT qty FROM item", db_dir)["exec_clean"] == 1.0
    assert spider("SELECT qty * 1.0 FROM item ORDER BY id", "SELECT qty FROM item ORDER BY id", db_dir)["exec_clean"] == 1.0


def test_column_order_does_not_matter(db_dir):
    gold = "SELECT name, price FROM item"
    assert spider("SELECT price, name FROM item", gold, db_dir)["exec_clean"] == 1.0
    assert spider("SELECT price, name FROM item ORDER BY id", gold + " ORDER BY id", db_dir)["exec_clean"] == 1.0
    assert spider("SELECT price, price FROM item", gold, db_dir)["exec_clean"] == 0.0
    # columns with the same values in another pairing are not a permutation of the gold
    assert S.results_equal([(1, 2), (2, 1)], [(1, 1), (2, 2)], order_matters=False) is False
    assert S.results_equal([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], order_matters=False) is True


def test_empty_prediction_never_matches_an_empty_gold(db_dir):
    # '' or ';...' scored 1 whenever the gold returned no rows
    gold = "SELECT name FROM item WHERE price > 100"
    for prediction in ["", "   ", ";", "; SELECT 1", "-- a comment"]:
        scores = spider(prediction, gold, db_dir)
        assert scores["exec_clean"] == scores["exec_raw"] == 0.0, prediction
    assert spider("SELECT name FROM item WHERE price > 50", gold, db_dir)["exec_clean"] == 1.0


def test_distinct_is_removed_from_both_as_the_standard_evaluator_does(db_dir):
    # keep_distinct=False: DISTINCT does not change an execution match either way
    assert spider("SELECT DISTINCT qty FROM item", "SELECT qty FROM item", db_dir)["exec_clean"] == 1.0
    assert spider("SELECT qty FROM item", "SELECT DISTINCT qty FROM item", db_dir)["exec_clean"] == 1.0
    assert S.remove_distinct("SELECT DISTINCT a, count(distinct b) FROM t WHERE c = 'distinct'") == \
        "SELECT  a, count( b) FROM t WHERE c = 'distinct'"


def test_raw_and_clean(db_dir):
    # the paper reports both; raw is the whole output, clean is cut at the first ';'
    scores = spider("SELECT name FROM item; and then some words", "SELECT name FROM item", db_dir)
    assert scores["exec_clean"] == scores["exact_set_clean"] == 1.0
    assert scores["exec_raw"] == scores["exact_set_raw"] == 0.0
    assert spider("SELECT name FROM item;", "SELECT name FROM item", db_dir) == ALL_ONE


def test_several_database_variants_must_all_match(tmp_path):
    folder = str(tmp_path / "db")
    make_db(folder, "shop", SHOP)
    path = os.path.join(folder, "shop", "shop_variant.sqlite")
    conn = sqlite3.connect(path)
    conn.executescript(SHOP + "INSERT INTO item VALUES (4, 'cap', 9.0, 1);")
    conn.commit(), conn.close()
    # equal on the first database, different on the variant (test-suite-sql-eval's distilled databases)
    assert spider("SELECT name FROM item WHERE id < 4", "SELECT name FROM item", folder)["exec_clean"] == 0.0
    assert spider("SELECT name FROM item WHERE id < 9", "SELECT name FROM item", folder)["exec_clean"] == 1.0


def test_absent_database_and_broken_gold(db_dir):
    assert S.score_spider("SELECT 1", {"output": "SELECT 1", "db_id": "absent"}, db_dir=db_dir) == \
        dict.fromkeys(S.METRICS["spider"])
    broken = spider("SELECT name FROM item", "SELECT nope FROM item", db_dir)
    assert broken["exec_clean"] is broken["exact_set_clean"] is None and "nope" in broken["gold_error"]
    no_structure = spider("SELECT 3.0", "SELECT 3", db_dir)  # runs, but exact-set match needs a column
    assert no_structure["exec_clean"] == 1.0 and no_structure["exact_set_clean"] is None
    assert "gold not parsed" in no_structure["gold_error"]
    summary = S.summarize([{"scores": broken}, {"scores": spider("SELECT name FROM item", "SELECT name FROM item", db_dir)}])
    assert summary["gold_errors"] == 1 and summary["exec_clean"] == 1.0 and summary["exec_clean_n"] == 1


# --- the sandbox ---


def test_sandbox_never_writes(db_dir):
    path = os.path.join(db_dir, "shop", "shop.sqlite")
    before = open(path, "rb").read()
    for sql in ["DELETE FROM item", "DROP TABLE item", "INSERT INTO item VALUES (4, 'x', 1, 1)",
                "UPDATE item SET price = 0", f"ATTACH DATABASE '{db_dir}/evil.sqlite' AS evil",
                "CREATE TABLE t (x)", "PRAGMA journal_mode=DELETE", "VACUUM"]:
        assert spider(sql, "SELECT count(*) FROM item", db_dir)["exec_clean"] == 0.0, sql
    assert open(path, "rb").read() == before
    assert not os.path.exists(os.path.join(db_dir, "evil.sqlite"))


def test_work_is_counted_not_timed(db_dir):
    forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    with pytest.raises(S.SQLFailure, match="more than 1,000,000 sqlite instructions"):
        S.run_sql(os.path.join(db_dir, "shop", "shop.sqlite"), forever, max_steps=1_000_000)
    scores = spider(forever, "SELECT count(*) FROM item", db_dir, max_steps=1_000_000)
    assert scores["exec_clean"] == 0.0 and "undecided" not in scores


@pytest.mark.parametrize("sql,why", [
    # one function call ran for 19-41 s past a 5 s limit
    ("SELECT length(printf('%.*c', 999999999, 'a'))", "not authorized to use function: printf"),
    ("SELECT length(format('%.*c', 999999999, 'a'))", "not authorized to use function: format"),
    ("SELECT hex(zeroblob(499999999))", "string or blob too big"),
    ("SELECT length(replace(hex(zeroblob(400000)), '0', '00'))", "string or blob too big"),
])
def test_single_calls_are_capped(db_dir, sql, why):
    with pytest.raises(S.SQLFailure, match=why):
        S.run_sql(os.path.join(db_dir, "shop", "shop.sqlite"), sql)


ROWS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r LIMIT 3000) "
BIG, HALF = "hex(zeroblob(49000))", "hex(zeroblob(24500))"  # 98 KB and 49 KB of '0', near the longest allowed
HOSTILE = [  # each once held gigabytes or ran for tens of seconds; (prediction, why it scores 0)
    ("SELECT zeroblob(999999) FROM item", "string or blob too big"),
    (ROWS + "SELECT zeroblob(99000) FROM r", "more than 3 rows"),  # the gold has 3 rows: stop fetching there
    (ROWS + "SELECT randomblob(50000) FROM r a, r b ORDER BY 1", "MemoryError"),  # the sorter under the heap cap
    (ROWS + "SELECT group_concat(randomblob(50000)) FROM r", "string or blob too big"),
    (f"SELECT instr({BIG}, {HALF}), replace({BIG}, {HALF}, 'x')", None),  # runs: about 0.1 s a call, wrong rows
    ("SELECT name FROM item WHERE " + " OR ".join([f"{BIG} LIKE '%{'_' * 999}%'"] * 10), "pattern too complex"),
]


def test_hostile_predictions_stay_bounded_in_a_child_under_a_memory_cap(db_dir):
    # a child process under a 1 GB address-space cap scores every hostile prediction; each scores 0 with its
    # reason, none is a scorer error, and the child ends (the memory bound holds without the kernel's help)
    import subprocess
    import sys
    script = (
        "import json, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); from metrics import scoring as S\n"
        "for sql in json.loads(sys.argv[2]):\n"
        "    s = S.score_spider(sql, {'output': 'SELECT name FROM item', 'db_id': 'shop'}, db_dir=sys.argv[1])\n"
        "    print(json.dumps(s), flush=True)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, db_dir, json.dumps([sql for sql, _ in HOSTILE])], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(HOSTILE)
    for (sql, why), scores in zip(HOSTILE, results):
        assert scores["exec_raw"] == 0.0 and "scorer_error" not in scores and "undecided" not in scores, sql[:80]
        exec_reasons = [r for r in scores.get("reason", "").split("; ") if r.startswith("exec_")]
        assert re.search(why, exec_reasons[0]) if why else not exec_reasons, (sql[:80], scores.get("reason"))


def test_the_safety_net_interrupts_for_real(db_dir):
    # with a 1 s clock a query of long single calls ran 13.5 s and returned normally; the
    # watchdog interrupts it (each call is short under the value limits), and the item is undecided, not 0
    many_calls = ROWS + f"SELECT count(*) FROM r a, r b WHERE instr({BIG} || a.n, {HALF} || b.n) > 0"
    with pytest.raises(S.SQLUndecided, match="0.5 s safety net"):
        S.run_sql(os.path.join(db_dir, "shop", "shop.sqlite"), many_calls, safety_seconds=0.5)


def test_a_prediction_with_more_rows_than_the_gold_is_not_fetched_past_it(db_dir):
    path = os.path.join(db_dir, "shop", "shop.sqlite")
    assert len(S.run_sql(path, "SELECT * FROM item", max_rows=3)) == 3
    with pytest.raises(S.SQLFailure, match="more than 2 rows"):
        S.run_sql(path, "SELECT * FROM item", max_rows=2)


def test_a_correct_slow_correlated_subquery_is_within_the_count():
    # 66.7M sqlite instructions on world_1 (over the old 50M budget: 0 where test-suite gives 1)
    path = os.path.join(SHARED, "spider", "database", "world_1", "world_1.sqlite")
    if not os.path.exists(path):
        pytest.skip(f"needs {path}")
    sql = ("SELECT Name FROM city AS a WHERE Population > "
           "(SELECT avg(Population) FROM city AS b WHERE b.District = a.District)")
    assert len(S.run_sql(path, sql, safety_seconds=600)) > 0


def test_equal_columns_in_any_order_are_one_permutation():
    # nine equal-valued columns in reverse order hit the 10,000-permutation cap and scored 0
    gold = [tuple(range(9)) + (1,) * 9]
    pred = [tuple(reversed(gold[0]))]
    assert S.results_equal(gold, pred, order_matters=False)
    assert len(list(S.column_permutations(gold, pred))) == 1


def test_database_path_with_uri_characters(tmp_path):
    # an unescaped '#' or '?' in the folder opened (and created) another, writable file
    folder = str(tmp_path / "we#ird?dir")
    make_db(folder, "shop", SHOP)
    before = sorted(os.listdir(tmp_path))
    assert spider("SELECT name FROM item", "SELECT name FROM item", folder) == ALL_ONE
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(sqlite3.OperationalError):  # mode=ro never creates a missing file
        S.open_read_only(str(tmp_path / "missing.sqlite")).execute("SELECT 1")
    assert not os.path.exists(tmp_path / "missing.sqlite")


# --- exact-set match: Spider's official component matching ---


@pytest.mark.parametrize("prediction,match", [
    ("SELECT T1.name FROM item AS T1 WHERE T1.price > 2", 1.0),  # aliases
    ("select name from item where price > 99", 1.0),  # values are ignored
    ("SELECT DISTINCT name FROM item WHERE price > 2", 1.0),  # DISTINCT is ignored
    ("SELECT name FROM item WHERE price < 2", 0.0),  # another operator
    ("SELECT name FROM item WHERE qty > 2", 0.0),  # another column
    ("SELECT name FROM item", 0.0),  # no WHERE
    ("SELECT name, price FROM item WHERE price > 2", 0.0),
    ("SELECT name FROM item WHERE price > 2 ORDER BY name", 0.0),
])
def test_exact_set_components(db_dir, prediction, match):
    gold = "SELECT name FROM item WHERE price > 2"
    assert spider(prediction, gold, db_dir)["exact_set_clean"] == match


def test_exact_set_order_of_columns_and_conditions(db_dir):
    gold = "SELECT name, price FROM item WHERE price > 1 AND qty = 3"
    assert spider("SELECT price, name FROM item WHERE qty = 3 AND price > 1", gold, db_dir)["exact_set_clean"] == 1.0
    assert spider("SELECT price, name FROM item WHERE qty = 3 OR price > 1", gold, db_dir)["exact_set_clean"] == 0.0
    # ORDER BY is a sequence: its order and direction count
    gold = "SELECT name FROM item ORDER BY price DESC LIMIT 1"
    assert spider("SELECT name FROM item ORDER BY price DESC LIMIT 2", gold, db_dir)["exact_set_clean"] == 1.0
    assert spider("SELECT name FROM item ORDER BY price LIMIT 1", gold, db_dir)["exact_set_clean"] == 0.0


def test_exact_set_foreign_keys_and_set_operations(db_dir):
    # sale.item_id references item.id: the official evaluator maps both to one column
    gold = "SELECT T1.name FROM item AS T1 JOIN sale AS T2 ON T1.id = T2.item_id GROUP BY T1.id"
    assert spider("SELECT T1.name FROM item AS T1 JOIN sale AS T2 ON T1.id = T2.item_id GROUP BY T2.item_id",
                  gold, db_dir)["exact_set_clean"] == 1.0
    assert spider("SELECT T1.name FROM item AS T1 JOIN sale AS T2 ON T1.id = T2.item_id GROUP BY T1.name",
                  gold, db_dir)["exact_set_clean"] == 0.0
    gold = "SELECT name FROM item WHERE qty = 3 INTERSECT SELECT name FROM item WHERE price > 2"
    assert spider("SELECT name FROM item WHERE qty = 1 INTERSECT SELECT name FROM item WHERE price > 9",
                  gold, db_dir)["exact_set_clean"] == 1.0
    assert spider("SELECT name FROM item WHERE qty = 3 UNION SELECT name FROM item WHERE price > 2",
                  gold, db_dir)["exact_set_clean"] == 0.0


@pytest.mark.parametrize("prediction, gold", [
    # where the official script gives 1 and this module gave 0
    ("SELECT name FROM item WHERE price > = 2", "SELECT name FROM item WHERE price >= 2"),  # tokenize joins '> ='
    ("SELECT name FROM item WHERE qty ! = 3", "SELECT name FROM item WHERE qty != 3"),
    ("SELECT name FROM item WHERE price > 2)", "SELECT name FROM item WHERE price > 2"),  # the rest is ignored
    ("SELECT count(*) FROM (SELECT name FROM item WHERE price = 30.0)",  # values kept in FROM subqueries, as
     "SELECT count(*) FROM (SELECT name FROM item WHERE price = 30)"),  # parse_value holds them: floats,
    ("SELECT count(*) FROM (SELECT name FROM item WHERE name = 'pen')",  # strings in double quotes
     'SELECT count(*) FROM (SELECT name FROM item WHERE name = "pen")'),
    ("SELECT name FROM item UNION SELECT name FROM item INTERSECT SELECT name FROM item WHERE qty = 3",
     "SELECT name FROM item UNION SELECT name FROM item INTERSECT SELECT name FROM item WHERE qty = 5"),
])
def test_exact_set_reads_as_the_official_tokenizer(db_dir, prediction, gold):
    assert spider(prediction, gold, db_dir)["exact_set_raw"] == 1.0


def test_exact_set_still_tells_apart():
    schema = {"item": ["name", "price", "qty"]}
    inner = "SELECT count(*) FROM (SELECT name FROM item WHERE price = {})"
    assert X.parse(inner.format("30"), schema) != X.parse(inner.format("31"), schema)  # the official quirk
    chain = X.parse("SELECT name FROM item UNION SELECT name FROM item INTERSECT SELECT name FROM item", schema)
    assert chain["union"]["intersect"] is not None and chain["intersect"] is None  # A.union = (B.intersect = C)
    assert X.official_reading("SELECT a FROM t WHERE b = ')' AND c > = 1") == "SELECT a FROM t WHERE b = ')' AND c >= 1"


def test_exact_set_unparsable_prediction_is_the_empty_query(db_dir):
    scores = spider("SELECT nothing FROM nowhere", "SELECT name FROM item", db_dir)
    assert scores["exact_set_clean"] == 0.0 and "prediction not parsed" in scores["reason"]


def test_foreign_keys_from_tables_json_or_the_database(tmp_path, db_dir):
    path = os.path.join(db_dir, "shop", "shop.sqlite")
    assert X.foreign_key_map("shop", path) == {"__sale.item_id__": "__item.id__", "__item.id__": "__item.id__"}
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps([{"db_id": "shop", "table_names_original": ["item", "sale"],
                                   "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "price"],
                                                             [0, "qty"], [1, "sid"], [1, "item_id"], [1, "amount"]],
                                   "foreign_keys": [[6, 1], [7, 4]]}]))
    assert X.foreign_key_map("shop", path, str(tables)) == {
        "__sale.item_id__": "__item.id__", "__item.id__": "__item.id__",
        "__sale.amount__": "__item.qty__", "__item.qty__": "__item.qty__"}


# --- the real dev set ---


@needs_shared
def test_real_spider_gold_scores_one():
    items = D.load_task("spider", "eval", os.path.join(SHARED, "spider", "official"))
    db_dir = os.path.join(SHARED, "spider", "database")
    tables = os.path.join(SHARED, "spider", "official", "tables.json")
    present = [x for x in items if S.database_files(db_dir, x["db_id"])]
    assert len(present) == 972  # the data README: 972 of 1,034 dev questions are executable
    for x in present:
        assert S.score_spider(x["output"], x, db_dir=db_dir, tables_path=tables) == ALL_ONE, x["output"]


def canonical(value):
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    return value


def with_indices(sql, entry):
    """Our structure with the official dev.json's integer column and table ids."""
    if sql is None:
        return None
    tables = entry["table_names_original"]
    cols = {f"__{tables[t].lower()}.{c.lower()}__": i for i, (t, c) in enumerate(entry["column_names_original"]) if t >= 0}
    cols["__all__"] = 0
    col = lambda u: None if u is None else (u[0], cols[u[1]], u[2])  # noqa: E731
    val = lambda u: None if u is None else (u[0], col(u[1]), col(u[2]))  # noqa: E731

    def value(v):
        return with_indices(v, entry) if isinstance(v, dict) else v

    def cond(c):
        return [u if isinstance(u, str) else (u[0], u[1], val(u[2]), value(u[3]), value(u[4])) for u in c]
    out = dict(sql)
    out["select"] = (sql["select"][0], [(a, val(v)) for a, v in sql["select"][1]])
    out["from"] = {"table_units": [(kind, with_indices(u, entry) if kind == "sql" else
                                    [t.lower() for t in tables].index(u[2:-2])) for kind, u in sql["from"]["table_units"]],
                   "conds": cond(sql["from"]["conds"])}
    out["where"], out["having"] = cond(sql["where"]), cond(sql["having"])
    out["groupBy"] = [col(u) for u in sql["groupBy"]]
    out["orderBy"] = (sql["orderBy"][0], [val(u) for u in sql["orderBy"][1]]) if sql["orderBy"] else []
    out["limit"] = None if sql["limit"] is None else int(sql["limit"])
    for k in ("intersect", "union", "except"):
        out[k] = with_indices(sql[k], entry)
    return out


def official_without_values(sql):
    """dev.json's parsed `sql` with the values dropped as evaluation.py does (lists made tuples later)."""
    if sql is None:
        return None
    sql = dict(sql, **{k: official_without_values(sql[k]) for k in ("intersect", "union", "except")})
    sql["from"] = {"table_units": [(k, official_without_values(u) if k == "sql" else u) for k, u in sql["from"]["table_units"]],
                   "conds": sql["from"]["conds"]}
    return X.drop_values(sql)


@needs_shared
def test_real_gold_structures_equal_the_official_parser():
    # dev.json carries the official process_sql.py's parse of every gold query: ours must agree
    dev = json.load(open(os.path.join(SHARED, "spider", "official", "dev.json")))
    tables = X.tables_json(os.path.join(SHARED, "spider", "official", "tables.json"))
    db_dir = os.path.join(SHARED, "spider", "database")
    same, differ = 0, []
    for row in dev:
        files = S.database_files(db_dir, row["db_id"])
        if not files:
            continue
        ours = with_indices(X.drop_values(X.parse(row["query"], X.load_schema(files[0]))), tables[row["db_id"]])
        if canonical(ours) == canonical(official_without_values(row["sql"])):
            same += 1
        else:
            differ.append(row["query"])
    # the 6 others: 4 join on 'A = B OR C = D', whose OR the official parser drops from the ON clause,
    # and 2 repeat a FROM subquery whose columns the official structure keeps unmapped
    assert same == 966 and len(differ) == 6
    assert sum(" OR " in q and "JOIN" in q for q in differ) == 4
