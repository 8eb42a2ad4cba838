"""replication/claims.py on an aggregate built from crafted runs: each claim's line, its test and a verdict
that says only what passes; and the two tests it adds to stats.py (Fisher's z, Pitman-Morgan)."""

import math

import pytest
from conftest import run_script

from replication import aggregate as A
from replication import claims as C
from replication import stats as S


def run(nontrivial_dfa, drift, forgetting, rank, kl=None):
    ft = {"drift": {"mean": drift, "early": drift / 2, "middle": drift, "late": drift * 1.5},
          "forgetting": forgetting,
          "collapse": {v: {"effective_rank": rank, "effective_rank_centred": 2 * rank} for v in ("z_tL", "z_tH")}}
    if kl is not None:
        ft["texts"] = {"wikitext": {"kl_from_base": kl}}
    base = {"collapse": {v: {"effective_rank": 10.0} for v in ("z_tL", "z_tH")}}
    return A.numbers({"nontrivial/dfa": nontrivial_dfa, "checkpoints": {"ft": ft, "base": base}})


NOISE = (0.01, -0.02, 0.015, -0.005, 0.0)


def three_arms():
    """DLLM-JEPA forgets 1 nat less than the baseline at every seed (drift equal), its task score differs by
    seed noise only; the control forgets like the baseline."""
    jepa = [run(0.30 + e, 1.0 + e, 2.0 + e, 9.0 + e, kl=1.0 + e) for e in NOISE]
    base = [run(0.30 - e, 1.0 + 2 * e, 3.0 - e, 9.0 - e, kl=2.0 - e) for e in NOISE]
    control = [run(0.30, 1.0, 3.0 + e / 2, 9.0, kl=2.0 + e) for e in NOISE]
    return A.aggregate({"jepa": jepa, "baseline": base, "control": control}, [("jepa", "baseline")])


def test_claims_table_from_three_arms():
    rows = {r[0]: r for r in C.claim_lines(three_arms())}
    assert set(rows) == {c.label for c in C.FAMILY}
    forgetting = rows["forgetting lower (WikiText loss rise, nats)"]
    assert forgetting[5] == "DLLM-JEPA lower (as the paper)" and "mean diff -1" in forgetting[3]
    # KL is a measure the paper does not report: a direction, never "as the paper"
    assert rows["forgetting lower (KL(base || ft), WikiText)"][5] == "DLLM-JEPA lower"
    assert rows["the prediction matters (forgetting, DLLM-JEPA vs shuffled-target control)"][5] == "DLLM-JEPA lower"
    assert rows["the extra term alone (forgetting, control vs baseline)"][5].startswith("not detected")
    task = rows["task gain"]
    assert task[5].startswith("not detected (Holm p = ") and "detectable: " in task[5]
    assert "OURS" not in task[2] and "0-shot, gen 64 / block 32" in task[2] and "4-shot, gen 512 / block 128" in task[1]
    # the retention rows need probes these runs lack: not measured, and not in the family
    assert rows["more kept (calibrated retention, GSM8K test)"][3:] == ["not measured in this aggregate", "-", "-"]


def test_the_family_is_holm_adjusted_together():
    report = three_arms()
    tested = [(c, C.run_test(report, c)) for c in C.FAMILY]
    tested = [(c, r) for c, r in tested if r is not None and r["p"] is not None]
    adjusted = S.holm([r["p"] for _, r in tested])
    rows = {r[0]: r for r in C.claim_lines(report)}
    for (claim, result), p in zip(tested, adjusted):
        assert f"p = {result['p']:.3g}, Holm p = {p:.3g}" in rows[claim.label][4]
    # 12 rows, less the two retention rows (not measured) and the seed spread: the task scores' per-seed sums
    # are constant here, so Pitman-Morgan has no correlation to test
    assert len(tested) == 9 and rows["seed spread of the task score"][5] == "no test (no spread)"


def test_dissociation_is_the_arms_difference_at_equal_drift():
    """Forgetting = 2 x drift + seed effect, DLLM-JEPA 0.5 lower at equal drift: gamma = -0.5 whatever the
    drift differences are."""
    drift_j, drift_b = [1.0, 1.2, 0.9, 1.4, 1.1], [1.1, 1.0, 1.0, 1.2, 1.3]
    seed_effect = [0.3, -0.2, 0.1, 0.0, 0.4]
    jepa = [run(0.3, d, 2 * d + s - 0.5 + e, 9.0) for d, s, e in zip(drift_j, seed_effect, NOISE)]
    base = [run(0.3, d, 2 * d + s, 9.0) for d, s in zip(drift_b, seed_effect)]
    report = A.aggregate({"jepa": jepa, "baseline": base}, [])
    claim = next(c for c in C.FAMILY if c.test == "dissociation")
    result = C.run_test(report, claim)
    assert result["difference"] == pytest.approx(-0.5, abs=0.05) and result["beta"] == pytest.approx(2.0, abs=0.3)
    assert result["p"] < 0.01 and result["ci"][0] < -0.5 < result["ci"][1]


def test_notes_compare_the_drift_ratio_with_each_paper_cell_and_describe_fishers_z():
    jepa = [run(0.3, d, 2.0 + d, 9.0) for d in (0.9, 1.02, 0.87, 0.99, 0.93)]
    base = [run(0.3, d, 2.0 + 2 * d, 9.0) for d in (1.0, 1.0, 1.0, 1.05, 0.98)]
    lines = C.notes(A.aggregate({"jepa": jepa, "baseline": base}, []))
    assert any("the paper's NL-RX (0.94x) is inside it" in x for x in lines)
    assert any("the paper's GSM8K (1.3-3.6x) is outside it" in x for x in lines)
    assert any("Fisher z" in x and "paired by seed" in x for x in lines)


def test_verdicts_say_only_what_passes():
    task, spread = C.FAMILY[0], next(c for c in C.FAMILY if c.test == "spread")
    drift = next(c for c in C.FAMILY if c.label.startswith("drift"))
    assert C.verdict(task, {"p": 0.01, "difference": 0.1}, 0.2, "0.05") == "not detected (Holm p = 0.20; detectable: 0.05)"
    assert C.verdict(task, {"p": 0.001, "difference": 0.1}, 0.01, "-") == "DLLM-JEPA higher (as the paper)"
    assert C.verdict(task, {"p": 0.001, "difference": -0.1}, 0.01, "-") == "DLLM-JEPA lower (opposite to the paper)"
    assert C.verdict(drift, {"p": 0.001, "difference": 0.1}, 0.01, "-") == "DLLM-JEPA higher"  # no claimed sign
    assert C.verdict(spread, {"p": 0.001, "difference": 0.5}, 0.01, "-") == "DLLM-JEPA tighter across seeds"
    assert C.verdict(task, {"p": None, "difference": 0.0}, 1.0, "-") == "no test (no spread)"
def test_fisher_z_reproduces_the_papers_figure_4_test():
    # the paper: r = +0.94 (baselines) vs +0.75 (DLLM-JEPA), n = 10 each: "Z = 1.42, p = 0.16" (from unrounded r)
    result = S.fisher_z(0.94, 10, 0.75, 10)
    expected = (math.atanh(0.94) - math.atanh(0.75)) / math.sqrt(2 / 7)
    assert result["z"] == pytest.approx(expected) and result["z"] == pytest.approx(1.42, abs=0.02)
    assert result["p"] == pytest.approx(0.152, abs=0.01)
    with pytest.raises(ValueError):
        S.fisher_z(0.5, 3, 0.1, 10)


def test_pitman_morgan_sees_unequal_paired_variances():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    same = S.pitman_morgan(a, [x + e for x, e in zip(a, [0.1, -0.1, 0.1, -0.1, 0.1, -0.1])])
    wide = S.pitman_morgan(a, [3 * x + e for x, e in zip(a, [0.1, -0.1, 0.0, 0.2, -0.2, 0.0])])
    assert same["p"] > 0.5 and same["ratio"] == pytest.approx(1.0, abs=0.05)
    assert wide["p"] < 0.001 and wide["r"] < 0 and wide["ratio"] == pytest.approx(1 / 3, abs=0.01)


def test_the_command_refuses_an_aggregate_without_the_arms(tmp_path):
    path = tmp_path / "aggregate.json"
    path.write_text('{"arms": {}, "pairs": {}}')
    proc = run_script(["-m", "replication.claims", f"--aggregate={path}"], check=False)
    assert proc.returncode == 2 and "no arms 'jepa' and 'baseline'" in proc.stderr
