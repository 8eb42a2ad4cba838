"""replication/claims.py on an aggregate built from crafted runs: each claim's line, its test and a verdict
that says only what passes; and the two tests it adds to stats.py (Fisher's z, Pitman-Morgan)."""

import math

import pytest
from conftest import run_script

from replication import aggregate as A
from replication import claims as C
from replication import stats as S


def run(nontrivial_dfa, drift, forgetting, rank):
    ft = {"drift": {"mean": drift, "early": drift / 2, "middle": drift, "late": drift * 1.5},
          "forgetting": forgetting,
          "collapse": {v: {"effective_rank": rank} for v in ("z_tL", "z_tH")}}
    base = {"collapse": {v: {"effective_rank": 10.0} for v in ("z_tL", "z_tH")}}
    return A.numbers({"nontrivial/dfa": nontrivial_dfa, "checkpoints": {"ft": ft, "base": base}})


def test_claims_table_from_an_aggregate():
    # DLLM-JEPA: higher task score on every seed, more drift, less forgetting, the same ranks
    jepa = [run(0.30 + e, 1.0 + e, 2.0 - e, 9.0 + r) for e, r in ((0.01, 0.1), (0.02, -0.2), (0.03, 0.0),
                                                                   (0.015, 0.3), (0.025, -0.1))]
    base = [run(0.20 + 3 * e, 0.5 + e, 3.0 + 2 * e, 9.0 + r) for e, r in ((0.01, 0.0), (0.03, 0.1), (0.02, -0.1),
                                                                          (0.0, 0.2), (0.04, 0.0))]
    report = A.aggregate({"jepa": jepa, "baseline": base}, [("jepa", "baseline")])
    rows = {r[0]: r for r in C.claim_lines(report)}
    assert rows["task gain (DFA, non-trivial golds)"][4] == "as the paper"
    assert rows["drift larger for DLLM-JEPA (mean)"][4] == "as the paper"
    assert rows["forgetting lower for DLLM-JEPA (nats)"][4] == "as the paper"
    assert rows["no collapse (z_tL effective rank)"][4].startswith("no difference detected")
    assert "base 10.00" in rows["no collapse (z_tL effective rank)"][2]
    # the baseline's task scores vary several times as much across seeds: tighter spread for DLLM-JEPA
    spread = rows["tighter seed spread"]
    assert "sd ratio DLLM-JEPA / baseline 0.17" in spread[2] and spread[4] == "as the paper"
    dissociation = rows["drift-forgetting dissociation"]
    assert "baseline r = +1.00" in dissociation[2] and "DLLM-JEPA r = -1.00" in dissociation[2]


def test_three_seeds_give_the_table_without_fishers_z():
    # replicate.sh writes claims.md from 3 seeds on; claims.py raised there (Fisher's z needs 4 pairs)
    jepa = [run(0.30 + e, 1.0 + e, 2.0 - e, 9.0 + e) for e in (0.01, 0.02, 0.03)]
    base = [run(0.20 + e, 0.5 + e, 3.0 + e, 9.0 - e) for e in (0.01, 0.03, 0.02)]
    report = A.aggregate({"jepa": jepa, "baseline": base}, [("jepa", "baseline")])
    rows = {r[0]: r for r in C.claim_lines(report)}
    dissociation = rows["drift-forgetting dissociation"]
    assert "baseline r = +1.00" in dissociation[2] and "DLLM-JEPA r = -1.00" in dissociation[2]
    assert dissociation[3:] == ["Fisher's z needs 4 seeds per arm (has 3)", "no test yet"]
    assert rows["task gain (DFA, non-trivial golds)"][3].startswith("paired t over 3 seeds")


def test_verdicts_say_only_what_passes():
    assert C.verdict(0.2, +1.0, +1) == "not detected (p = 0.20)"
    assert C.verdict(0.01, +1.0, +1) == "as the paper" and C.verdict(0.01, -1.0, +1) == "opposite"
    assert C.verdict(None, 0.0, +1) == "no test (no spread)"


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


def test_the_command_refuses_an_aggregate_without_the_pair(tmp_path):
    path = tmp_path / "aggregate.json"
    path.write_text('{"arms": {}, "pairs": {}}')
    proc = run_script(["-m", "replication.claims", f"--aggregate={path}"], check=False)
    assert proc.returncode == 2 and "no pair 'jepa-baseline'" in proc.stderr
