"""
Spider's exact-set match (Yu et al. 2018, "Spider: A Large-Scale Human-Labeled Dataset for Complex and
Cross-Domain Semantic Parsing and Text-to-SQL Task"; the official evaluation.py and process_sql.py of
github.com/taoyds/spider), on the maintained sqlglot parser instead of process_sql's tokenizer.

  SQL text --sqlglot--> AST --to_spider_sql--> Spider's parsed-SQL structure (the `sql` field of dev.json)
           --drop values, map foreign keys (evaluation.py's rebuild_sql_val / rebuild_sql_col)-->
           --compare component by component (eval_partial_match), then the FROM tables--> 1 or 0

The structure, as in process_sql.py: col_unit = (agg, "__table.column__", distinct), val_unit = (unit_op,
col_unit, col_unit | None), cond_unit = (not, op, val_unit, val1, val2), a condition is a flat list
[cond_unit, "and"|"or", cond_unit, ...] in reading order; agg, op and unit_op are the indices below.
Values are ignored as the official default does (DISABLE_VALUE), DISTINCT too (DISABLE_DISTINCT), and the
order of SELECT columns and of WHERE conditions does not matter (components are compared as multisets).
Known quirks kept on purpose, because the official metric has them: FROM ... ON conditions are not
compared (only their keywords count), GROUP BY compares column names without their table, LIMIT is
compared by presence only, values inside FROM subqueries are not dropped (and compare as parse_value
holds them: numbers as floats, strings in double quotes). The text is read as process_sql's tokenizer
reads it (official_reading): '> =' is '>=', and a ')' that closes nothing ends the query.

Known differences, all where the official parser fails and this module scores (a 1 where the official
script gives 0; README lists them): 'a=b' written without spaces, a table alias without AS, a WHERE
condition in parentheses, '<>' for '!='. Where a prediction cannot be parsed or names a column the schema
lacks, it is compared as the official empty query (0).
"""

import json
import os
import sqlite3
from functools import lru_cache
from pathlib import Path

import sqlglot
from sqlglot import exp

AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGGS = {exp.Max: 1, exp.Min: 2, exp.Count: 3, exp.Sum: 4, exp.Avg: 5}
UNITS = {exp.Sub: 1, exp.Add: 2, exp.Mul: 3, exp.Div: 4}
OPS = {exp.Between: 1, exp.EQ: 2, exp.GT: 3, exp.LT: 4, exp.GTE: 5, exp.LTE: 6, exp.NEQ: 7, exp.In: 8,
       exp.Like: 9, exp.Is: 10, exp.Exists: 11}
SET_OPS = {exp.Intersect: "intersect", exp.Union: "union", exp.Except: "except"}


class Unparsable(ValueError):
    """The query is outside what the structure can express, or names what the schema lacks."""


def empty_sql():
    """What the official evaluator compares an unparsable prediction as."""
    return {"select": (False, []), "from": {"table_units": [], "conds": []}, "where": [], "groupBy": [],
            "having": [], "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None}


# -----------------------------------------------------------------------------
# schema: tables and columns from the database itself (as evaluation.py's get_schema), foreign keys from
# tables.json (evaluation.py's build_foreign_key_map), else from the database's own foreign key list


def open_schema(db_path):
    """The database read-only, for this module's own fixed schema queries (no model output runs here;
    scoring.open_read_only is the sandbox for that)."""
    return sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)


@lru_cache(maxsize=256)
def load_schema(db_path):
    """{table: [columns]}, lower case, read from the sqlite file."""
    conn = open_schema(db_path)
    try:
        tables = [r[0].lower() for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: [r[1].lower() for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}
    finally:
        conn.close()


@lru_cache(maxsize=8)
def tables_json(path):
    with open(path, encoding="utf-8") as f:
        return {entry["db_id"]: entry for entry in json.load(f)}


def foreign_key_map(db_id, db_path, tables_path=None):
    """{"__t.c__": the canonical column of its foreign-key group}: each group of columns linked by foreign
    keys maps to its member with the smallest column index (build_foreign_key_map). From tables.json when
    it lists db_id, else from the database's PRAGMA foreign_key_list (grouped the same way)."""
    if tables_path and os.path.exists(tables_path) and db_id in tables_json(tables_path):
        entry = tables_json(tables_path)[db_id]
        tables = entry["table_names_original"]
        cols = [f"__{tables[t].lower()}.{c.lower()}__" if t >= 0 else "__all__"
                for t, c in entry["column_names_original"]]
        links = [(cols[a], cols[b]) for a, b in entry["foreign_keys"]]
        order = {c: i for i, c in enumerate(cols)}
    else:
        schema = load_schema(db_path)
        conn = open_schema(db_path)
        try:
            links = [(f"__{t}.{str(r[3]).lower()}__", f"__{str(r[2]).lower()}.{str(r[4]).lower()}__")
                     for t in schema for r in conn.execute(f'PRAGMA foreign_key_list("{t}")') if r[4]]
        finally:
            conn.close()
        order = {f"__{t}.{c}__": i for i, (t, c) in enumerate((t, c) for t in schema for c in schema[t])}
    groups = []
    for a, b in links:
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            groups.append(group := set())
        group |= {a, b}
    return {c: min(g, key=lambda x: order.get(x, 1 << 30)) for g in groups for c in g}


# -----------------------------------------------------------------------------
# sqlglot AST -> Spider's structure


class Converter:
    """Builds Spider's structure from a sqlglot tree against a schema. Aliases are global to the query,
    as in process_sql's get_tables_with_alias."""

    def __init__(self, schema, tree):
        self.schema = schema
        self.alias = {t: t for t in schema}
        for table in tree.find_all(exp.Table):
            name = table.name.lower()
            if table.alias:
                self.alias[table.alias.lower()] = name

    def sql(self, node):
        """A query; a chain of set operations A op1 B op2 C nests to the right: A.op1 = (B.op2 = C)."""
        chain = []
        while True:  # sqlglot nests to the left: ((A op1 B) op2 C), with '(A UNION B)' wrapped as a Subquery
            if isinstance(node, exp.Subquery) and isinstance(node.this, tuple(SET_OPS)):
                node = node.this
            elif isinstance(node, tuple(SET_OPS)):
                chain.append((SET_OPS[type(node)], node.expression))
                node = node.this
            else:
                break
        if isinstance(node, exp.Subquery):
            node = node.this
        if not isinstance(node, exp.Select):
            raise Unparsable(f"not a SELECT: {type(node).__name__}")
        out = self.select(node)
        tail = out
        for op, right in reversed(chain):
            right = right.this if isinstance(right, exp.Subquery) else right
            tail[op] = self.sql(right)
            tail = tail[op]
        return out

    def select(self, node):
        default_tables, table_units, conds = [], [], []
        sources = [node.args.get("from_") or node.args.get("from")] + list(node.args.get("joins") or [])
        for src in sources:
            if src is None:
                continue
            target = src.this
            if isinstance(target, exp.Table):
                name = target.name.lower()
                if name not in self.schema:
                    raise Unparsable(f"no table {name}")
                table_units.append(("table_unit", f"__{name}__"))
                default_tables.append(name)
            elif isinstance(target, exp.Subquery):
                table_units.append(("sql", self.sql(target.this)))
            else:
                raise Unparsable(f"FROM {type(target).__name__}")
        self.default_tables = default_tables
        for join in node.args.get("joins") or []:
            if join.args.get("on") is not None and not isinstance(join.args["on"], exp.Boolean):  # sqlglot's ON TRUE
                conds += (["and"] if conds else []) + self.condition(join.args["on"])
        out = empty_sql()
        out["from"] = {"table_units": table_units, "conds": conds}
        out["select"] = (node.args.get("distinct") is not None, [self.select_item(e) for e in node.expressions])
        self.default_tables = default_tables  # restored after any subquery
        if node.args.get("where") is not None:
            out["where"] = self.condition(node.args["where"].this)
        if node.args.get("group") is not None:
            out["groupBy"] = [self.col_unit(e) for e in node.args["group"].expressions]
        if node.args.get("having") is not None:
            self.default_tables = default_tables
            out["having"] = self.condition(node.args["having"].this)
        if node.args.get("order") is not None:
            self.default_tables = default_tables
            direction, units = "asc", []
            for ordered in node.args["order"].expressions:
                units.append(self.val_unit(ordered.this))
                if ordered.args.get("desc") is not None:  # the last explicit direction holds for all
                    direction = "desc" if ordered.args["desc"] else "asc"
            out["orderBy"] = (direction, units)
        if node.args.get("limit") is not None:
            out["limit"] = node.args["limit"].expression.sql()
        return out

    def select_item(self, e):
        e = e.this if isinstance(e, exp.Alias) else e
        if type(e) in AGGS:  # in SELECT the aggregate sits outside the val_unit
            distinct, inner = self.unwrap_distinct(e.this)
            unit = self.val_unit(inner)
            if distinct:
                unit = (unit[0], (unit[1][0], unit[1][1], True), unit[2])
            return AGGS[type(e)], unit
        return 0, self.val_unit(e)

    @staticmethod
    def unwrap_distinct(e):
        if isinstance(e, exp.Distinct):
            if len(e.expressions) != 1:
                raise Unparsable("DISTINCT over several expressions")
            return True, e.expressions[0]
        return False, e

    def val_unit(self, e):
        e = e.this if isinstance(e, exp.Paren) else e
        if type(e) in UNITS:
            return UNITS[type(e)], self.col_unit(e.this), self.col_unit(e.expression)
        return 0, self.col_unit(e), None

    def col_unit(self, e):
        e = e.this if isinstance(e, exp.Paren) else e
        agg = 0
        if type(e) in AGGS:
            agg, e = AGGS[type(e)], e.this
        distinct, e = self.unwrap_distinct(e)
        return agg, self.column(e), distinct

    def column(self, e):
        if isinstance(e, exp.Star):
            return "__all__"
        if not isinstance(e, exp.Column) or isinstance(e.this, exp.Star):
            raise Unparsable(f"expected a column, got {e.sql()[:60]!r}")
        name, qualifier = e.name.lower(), e.table.lower()
        if qualifier:
            table = self.alias.get(qualifier)
            if table is None or name not in self.schema.get(table, ()):
                raise Unparsable(f"no column {qualifier}.{name}")
            return f"__{table}.{name}__"
        for table in self.default_tables:
            if name in self.schema[table]:
                return f"__{table}.{name}__"
        raise Unparsable(f"no column {name} in {self.default_tables}")

    def condition(self, e):
        """A flat [cond_unit, 'and'|'or', ...] in reading order (process_sql reads and/or left to right)."""
        if isinstance(e, exp.Paren):
            return self.condition(e.this)
        if isinstance(e, (exp.And, exp.Or)):
            return self.condition(e.this) + ["and" if isinstance(e, exp.And) else "or"] + self.condition(e.expression)
        return [self.cond_unit(e)]

    def cond_unit(self, e):
        negated = False
        while isinstance(e, exp.Not):
            negated, e = not negated, e.this
        negated ^= bool(e.args.get("negate"))
        if type(e) not in OPS:
            raise Unparsable(f"condition {type(e).__name__}")
        op = OPS[type(e)]
        if op == OPS[exp.Exists]:
            return negated, op, (0, (0, "__all__", False), None), self.value(e.this), None
        if op == OPS[exp.Between]:
            return negated, op, self.val_unit(e.this), self.value(e.args["low"]), self.value(e.args["high"])
        if op == OPS[exp.In]:
            query = e.args.get("query")
            values = [query] if query is not None else e.expressions
            return negated, op, self.val_unit(e.this), self.value(values[0]) if len(values) == 1 else None, None
        return negated, op, self.val_unit(e.this), self.value(e.expression), None

    def value(self, e):
        """A subquery's structure, a column's col_unit, else the literal's text (dropped later)."""
        e = e.this if isinstance(e, exp.Paren) and not isinstance(e.this, exp.Select) else e
        if isinstance(e, (exp.Subquery, exp.Select) + tuple(SET_OPS)):
            saved = self.default_tables
            out = self.sql(e.this if isinstance(e, exp.Subquery) else e)
            self.default_tables = saved
            return out
        if isinstance(e, exp.Column) and not (e.this.args.get("quoted") and not e.table):
            return self.col_unit(e)
        return literal(e)


def literal(e):
    """A value as process_sql's parse_value holds it (it matters where values are kept, inside FROM
    subqueries): a string with double quotes whatever quotes it was written with (tokenize turns every
    ' into "), a number as a float (so 30 and 30.0 are one value), anything else as its text."""
    if isinstance(e, exp.Literal) and e.is_string:
        return f'"{e.this}"'
    if isinstance(e, exp.Column):  # "text": sqlglot's quoted identifier, process_sql's string
        return f'"{e.name}"'
    try:
        return float(e.sql())
    except ValueError:
        return e.sql()


def official_reading(sql):
    """The text as process_sql's tokenizer sees it, where sqlglot alone would differ: '! =', '> =' and
    '< =' are one operator (tokenize joins them), and a ')' that closes nothing ends the query (parse_sql
    stops there and evaluation ignores the rest). Quoted strings are left as they are."""
    out, depth, quote = [], 0, None
    for ch in sql:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        elif ch == "=":
            j = len(out)
            while j and out[j - 1].isspace():
                j -= 1
            if j < len(out) and j and out[j - 1] in "!<>":
                del out[j:]
        out.append(ch)
    return "".join(out)


def parse(sql, schema):
    """Spider's structure of a query. Raises Unparsable."""
    try:
        tree = sqlglot.parse_one(official_reading(sql), read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError) as e:
        raise Unparsable(f"sqlglot: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if tree is None:
        raise Unparsable("empty query")
    return Converter(schema, tree).sql(tree)


# -----------------------------------------------------------------------------
# evaluation.py's rebuild_sql_val / rebuild_sql_col: drop values, map foreign keys, drop DISTINCT


def drop_values(sql):
    if sql is None:
        return None
    for key in ("where", "having"):
        sql[key] = _drop_condition_values(sql[key])
    sql["from"]["conds"] = _drop_condition_values(sql["from"]["conds"])
    for key in ("intersect", "except", "union"):
        sql[key] = drop_values(sql[key])
    return sql


def _drop_condition_values(condition):
    out = []
    for unit in condition:
        if isinstance(unit, str):
            out.append(unit)
        else:
            not_op, op, val_unit, v1, v2 = unit
            v1, v2 = (drop_values(v) if isinstance(v, dict) else None for v in (v1, v2))
            out.append((not_op, op, val_unit, v1, v2))
    return out


def map_columns(sql, valid, kmap):
    """Foreign-key mapping (only for columns of the top-level FROM tables) and DISTINCT dropped."""
    if sql is None:
        return None

    def col(unit):
        if unit is None:
            return None
        agg, col_id, _ = unit
        return agg, kmap[col_id] if col_id in kmap and col_id in valid else col_id, None

    def val(unit):
        return unit if unit is None else (unit[0], col(unit[1]), col(unit[2]))

    def cond(condition):
        return [u if isinstance(u, str) else (u[0], u[1], val(u[2]), u[3], u[4]) for u in condition]

    sql["select"] = (sql["select"][0], [(agg, val(v)) for agg, v in sql["select"][1]])
    sql["from"] = {"table_units": [u if u[0] == "sql" else u for u in sql["from"]["table_units"]],
                   "conds": cond(sql["from"]["conds"])}
    sql["where"], sql["having"] = cond(sql["where"]), cond(sql["having"])
    sql["groupBy"] = [col(u) for u in sql["groupBy"]]
    if sql["orderBy"]:
        sql["orderBy"] = (sql["orderBy"][0], [val(u) for u in sql["orderBy"][1]])
    for key in ("intersect", "except", "union"):
        sql[key] = map_columns(sql[key], valid, kmap)
    return sql


def normalise(sql, schema, kmap):
    """Values and DISTINCT dropped, foreign keys mapped, as the official evaluator does before comparing."""
    tables = {u[1][2:-2] for u in sql["from"]["table_units"] if u[0] == "table_unit"}
    valid = {f"__{t}.{c}__" for t in tables for c in schema.get(t, ())}
    return map_columns(drop_values(sql), valid, kmap)


# -----------------------------------------------------------------------------
# evaluation.py's eval_partial_match and eval_exact_match


def _multiset_hits(pred, gold):
    gold, hits = list(gold), 0
    for unit in pred:
        if unit in gold:
            hits += 1
            gold.remove(unit)
    return hits


def _keywords(sql):
    out = {k for k, present in (("where", sql["where"]), ("group", sql["groupBy"]), ("having", sql["having"]),
                                ("limit", sql["limit"] is not None), ("except", sql["except"]),
                                ("union", sql["union"]), ("intersect", sql["intersect"])) if present}
    if sql["orderBy"]:
        out |= {sql["orderBy"][0], "order"}
    conditions = sql["from"]["conds"] + sql["where"] + sql["having"]
    units = [u for u in conditions if not isinstance(u, str)]
    if "or" in conditions:
        out.add("or")
    out |= {"not"} if any(u[0] for u in units) else set()
    out |= {"in"} if any(u[1] == OPS[exp.In] for u in units) else set()
    out |= {"like"} if any(u[1] == OPS[exp.Like] for u in units) else set()
    return out


def component_matches(pred, gold):
    """{component: matched}, the components of eval_partial_match (matched = its F1 is 1)."""
    def same(pred_total, gold_total, hits):
        return pred_total == gold_total == hits

    out = {}
    p_sel, g_sel = pred["select"][1], gold["select"][1]
    out["select"] = same(len(p_sel), len(g_sel), _multiset_hits(p_sel, g_sel))
    out["select(no AGG)"] = same(len(p_sel), len(g_sel), _multiset_hits([u[1] for u in p_sel], [u[1] for u in g_sel]))
    p_where, g_where = pred["where"][::2], gold["where"][::2]
    out["where"] = same(len(p_where), len(g_where), _multiset_hits(p_where, g_where))
    out["where(no OP)"] = same(len(p_where), len(g_where),
                               _multiset_hits([u[2] for u in p_where], [u[2] for u in g_where]))
    name = lambda unit: unit[1].split(".")[1] if "." in unit[1] else unit[1]  # noqa: E731 (table ignored)
    out["group(no Having)"] = same(len(pred["groupBy"]), len(gold["groupBy"]),
                                   _multiset_hits(list(map(name, pred["groupBy"])), list(map(name, gold["groupBy"]))))
    p_group, g_group = bool(pred["groupBy"]), bool(gold["groupBy"])
    out["group"] = p_group == g_group and (not g_group or ([u[1] for u in pred["groupBy"]] == [u[1] for u in gold["groupBy"]]
                                                           and pred["having"] == gold["having"]))
    p_order, g_order = bool(pred["orderBy"]), bool(gold["orderBy"])
    out["order"] = p_order == g_order and (not g_order or (pred["orderBy"] == gold["orderBy"] and
                                                           (pred["limit"] is None) == (gold["limit"] is None)))
    out["and/or"] = set(pred["where"][1::2]) == set(gold["where"][1::2])
    nested = [(pred[k], gold[k]) for k in ("intersect", "except", "union")]
    out["IUEN"] = all((p is None) == (g is None) and (p is None or exact_structure_match(p, g)) for p, g in nested)
    p_kw, g_kw = _keywords(pred), _keywords(gold)
    out["keywords"] = p_kw == g_kw
    return out


def exact_structure_match(pred, gold):
    """eval_exact_match on two normalised structures: every component matches and so do the FROM tables."""
    if not all(component_matches(pred, gold).values()):
        return False
    if gold["from"]["table_units"]:
        key = lambda units: sorted(units, key=repr)  # noqa: E731 (the official sorted() fails on two subqueries)
        return key(pred["from"]["table_units"]) == key(gold["from"]["table_units"])
    return True


def exact_set_match(pred_sql, gold_sql, db_path, db_id, tables_path=None):
    """(1.0 or 0.0, reason or None). The gold must parse (Unparsable otherwise: the item is not scorable);
    a prediction that does not is compared as the empty query, as the official evaluator does."""
    schema = load_schema(db_path)
    kmap = foreign_key_map(db_id, db_path, tables_path)
    gold = normalise(parse(gold_sql, schema), schema, kmap)
    reason = None
    try:
        pred = parse(pred_sql, schema)
    except Unparsable as e:
        pred, reason = empty_sql(), f"prediction not parsed: {e}"
    pred = normalise(pred, schema, kmap)
    return float(exact_structure_match(pred, gold)), reason
