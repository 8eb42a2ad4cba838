"""replication/aggregate.py on crafted result files: mean and population std per arm, per-seed paired differences,
numbers missing from a run named, mistakes as one line."""

import json

import pytest
from conftest import run_script

from replication import aggregate as A
from replication import items as I


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


def test_mean_population_std_and_pairs(tmp_path):
    jepa = [write(tmp_path, f"j{s}.json", {"exact": e, "dfa": d, "n": 500, "config": {"lr": 1e-4}})
            for s, e, d in ((42, 0.5, 0.6), (123, 0.6, 0.7), (777, 0.7, 0.8))]
    base = [write(tmp_path, f"b{s}.json", {"exact": e, "dfa": d, "n": 500}) for s, e, d in ((42, 0.4, 0.6), (123, 0.4, 0.5),
                                                                                               (777, 0.6, 0.5))]
    probes = [write(tmp_path, f"p{s}.json", {"checkpoints": {"ft": {"drift": {"mean": m}}}}) for s, m in ((42, 0.1),
                                                                                                           (123, 0.3),
                                                                                                           (777, 0.2))]
    runs = {"jepa": [A.read_run(f"{j}+{p}") for j, p in zip(jepa, probes)], "baseline": [A.read_run(b) for b in base]}
    report = A.aggregate(runs, [("jepa", "baseline")])
    exact = report["arms"]["jepa"]["numbers"]["exact"]
    assert exact["mean"] == pytest.approx(0.6) and exact["std"] == pytest.approx((2 / 3 * 0.01) ** 0.5)  # population
    assert report["arms"]["jepa"]["numbers"]["checkpoints/ft/drift/mean"]["mean"] == pytest.approx(0.2)
    assert "lr" not in str(report["arms"]["jepa"]["numbers"])  # config subtrees are not results
    diffs = report["pairs"]["jepa-baseline"]
    assert diffs["exact"]["differences"] == pytest.approx([0.1, 0.2, 0.1]) and diffs["exact"]["mean"] == pytest.approx(0.4 / 3)
    assert set(diffs) == {"exact", "dfa", "n"}  # the probe numbers are in one arm only
    # [0.1, 0.2, 0.1]: sd 0.0577, t-interval mean +- 4.3027 x sd / sqrt 3 (df 2); no test (claims.py tests)
    assert diffs["exact"]["sd"] == pytest.approx(0.057735, abs=1e-6)
    assert diffs["exact"]["interval_95"] == pytest.approx((0.4 / 3 - 0.143426, 0.4 / 3 + 0.143426), abs=1e-5)
    assert not {"t_test", "sign_test", "passes_05"} & set(diffs["exact"])
    assert "n" not in A.read_run(base[0], ignored={"n"})  # settings such as n can be left out
    assert report["correlations"] == {}  # the probes lack forgetting: no drift ~ forgetting correlation


def test_the_ignored_settings_leave_the_probes_fitted_temperatures(tmp_path):
    # 'temperature' matched on the last name part dropped every probe's fitted temperature with the sampler's
    ignored = set(A.ignore.split(","))
    summary = write(tmp_path, "s.json", {"exact": 0.5, "n": 500, "temperature": 0.0, "nontrivial/n": 300})
    probe = write(tmp_path, "p.json", {"texts": {"wiki": {"n_samples": 100, "samples_cut_to_sample_len": 3}},
                                       "checkpoints": {"ft": {"texts": {"wiki": {"temperature": 1.8, "loss": 9.0}}}}})
    assert A.read_run(f"{summary}+{probe}", ignored) == {
        "exact": 0.5, "checkpoints/ft/texts/wiki/temperature": 1.8, "checkpoints/ft/texts/wiki/loss": 9.0}


def test_drift_forgetting_correlation_per_arm(tmp_path):
    runs = [A.read_run(write(tmp_path, f"p{i}.json", {"checkpoints": {"ft": {"drift": {"mean": d}, "forgetting": f}}}))
            for i, (d, f) in enumerate(((0.1, 1.0), (0.2, 2.0), (0.3, 2.5), (0.4, 4.5)))]
    found = A.aggregate({"jepa": runs}, [])["correlations"]["jepa"]
    pair = "checkpoints/ft/drift/mean ~ checkpoints/ft/forgetting"
    assert found[pair]["r"] == pytest.approx(0.96476382) and found[pair]["n"] == 4


def test_a_number_missing_from_one_run_is_named(tmp_path):
    runs = [A.read_run(write(tmp_path, "a.json", {"exact": 1.0, "dfa": 1.0})),
            A.read_run(write(tmp_path, "b.json", {"exact": 0.0}))]
    report = A.aggregate({"arm": runs}, [])
    assert list(report["arms"]["arm"]["numbers"]) == ["exact"] and report["arms"]["arm"]["not_in_every_run"] == ["dfa"]


def test_the_command(tmp_path):
    a = [write(tmp_path, f"a{i}.json", {"exact": i / 10}) for i in range(3)]
    b = [write(tmp_path, f"b{i}.json", {"exact": 0.0}) for i in range(3)]
    out = tmp_path / "agg.json"
    proc = run_script(["-m", "replication.aggregate", "--arms", f"jepa:{','.join(a)};baseline:{','.join(b)}", "--pair=jepa/baseline",
                       f"--out={out}"])
    assert json.load(open(out))["pairs"]["jepa-baseline"]["exact"]["differences"] == pytest.approx([0.0, 0.1, 0.2])
    assert "+0.1000" in proc.stdout
    bad = run_script(["-m", "replication.aggregate", "--arms", f"jepa:{a[0]},{a[1]};baseline:{b[0]}", "--pair=jepa/baseline"],
                     check=False)
    assert bad.returncode == 2 and "as many runs on each side" in bad.stderr
    broken = write(tmp_path, "broken.json", {})
    (tmp_path / "broken.json").write_text("{\n  \"exact\": ")
    bad = run_script(["-m", "replication.aggregate", "--arms", f"x:{broken}"], check=False)
    assert bad.returncode == 2 and "broken.json:2" in bad.stderr and "Traceback" not in bad.stderr


def write_items(tmp_path, name, rows):
    import gzip
    path = tmp_path / name
    with gzip.open(path, "wt") as f:
        for index, dfa, language in rows:
            f.write(json.dumps({"index": index, "scores": {"dfa": dfa, "exact": 0.0, "gold_language": language}}) + "\n")
    return str(path)


def test_item_level_mcnemar_per_seed_with_leaked_items_apart(tmp_path):
    # two seeds x 4 items; item 3 is leaked (reported apart), item 2's gold is the empty language (trivial)
    a = [write_items(tmp_path, f"a{s}.gz", [(0, 1.0, "other"), (1, 1.0, "other"), (2, 1.0, "empty"), (3, 1.0, "other")])
         for s in (0, 1)]
    b = [write_items(tmp_path, "b0.gz", [(0, 0.0, "other"), (1, 1.0, "other"), (2, 0.0, "empty"), (3, 0.0, "other")]),
         write_items(tmp_path, "b1.gz", [(0, 0.0, "other"), (1, 0.0, "other"), (2, None, "empty"), (3, 0.0, "other")])]
    tests = I.item_tests([I.read_items(p) for p in a], [I.read_items(p) for p in b], leaked_indices={3})
    # all (less item 3): seed 0 items 0,1,2 -> a only on 0 and 2; seed 1 items 0,1 (2 undecided) -> a only on 0, 1
    found = tests["all"]["dfa"]
    assert (found["pairs"], found["a_mean"], found["b_mean"]) == (5, 1.0, 0.2)
    assert found["per_seed"] == [{"a_only": 2, "b_only": 0, "p": 0.5, "pairs": 3},
                                 {"a_only": 2, "b_only": 0, "p": 0.5, "pairs": 2}]
    lo, hi = found["interval_95"]
    assert 0.0 <= lo < 0.8 <= hi <= 1.0  # around the point estimate 4 / 5; seed 1 alone (differences 1, 1) gives 1
    assert [(s["a_only"], s["pairs"]) for s in tests["nontrivial"]["dfa"]["per_seed"]] == [(1, 2), (2, 2)]
    assert [(s["a_only"], s["pairs"]) for s in tests["leaked"]["dfa"]["per_seed"]] == [(1, 1), (1, 1)]
    assert all(s["a_only"] == s["b_only"] == 0 for s in tests["all"]["exact"]["per_seed"])
    leaked = write(tmp_path, "leaked.json", {"indices": [3]})
    runs = [write(tmp_path, f"r{i}.json", {"exact": 0.0}) for i in range(2)]
    proc = run_script(["-m", "replication.aggregate", "--arms", f"jepa:{','.join(runs)};baseline:{','.join(runs)}",
                       "--pair=jepa/baseline", "--items", f"jepa:{','.join(a)};baseline:{','.join(b)}",
                       f"--leaked={leaked}", f"--out={tmp_path / 'agg.json'}"])
    report = json.load(open(tmp_path / "agg.json"))
    assert report["items"]["jepa-baseline"]["all"]["dfa"]["per_seed"][1]["a_only"] == 2 and report["leaked_items"] == [3]
    assert "item level, per seed a only / b only" in proc.stdout


def test_compare_two_evaluations_of_the_same_items(tmp_path):
    a = write_items(tmp_path, "a.gz", [(0, 1.0, "other"), (1, 1.0, "other"), (2, 1.0, "empty")])
    b = write_items(tmp_path, "b.gz", [(0, 0.0, "other"), (1, 1.0, "other"), (2, 0.0, "empty")])
    proc = run_script(["-m", "replication.compare", f"--a={a}", f"--b={b}"])
    assert "all        dfa                   a 1.000  b 0.333  over 3 items: a only 2, b only 0, McNemar p 0.500" \
        in proc.stdout
    assert "nontrivial dfa                   a 1.000  b 0.500  over 2 items: a only 1, b only 0" in proc.stdout
    assert run_script(["-m", "replication.compare", f"--a={a}"], check=False).returncode == 2
