"""replication/stats.py and figures.py: the paired t-test against Student's critical values (and scipy where installed),
the exact sign and McNemar tests on crafted counts, the bootstrap interval's determinism and coverage."""

import pytest

from replication import stats as S

# two-sided 5% critical values of Student's t (any table; e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
CRITICAL_05 = {1: 12.7062, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 30: 2.042272}


def test_texts_table_reads_the_base_then_each_arm_over_the_seeds_all_arms_share():
    from replication import figures as F
    base = {"loss": 6.0, "calibrated_loss": 6.1, "temperature": 1.0, "top1": 0.2}  # no KL, no retention

    def probe(loss, kl):
        ft = {"loss": loss, "calibrated_loss": loss - 2, "temperature": 2.0, "top1": 0.01, "kl_from_base": kl,
              "retention_calibrated": -0.5}
        return {"texts": {"wiki": {"unigram_loss": 7.0, "unigram_loss_report_half": 7.05}},
                "checkpoints": {"base": {"texts": {"wiki": base}}, "ft": {"texts": {"wiki": ft}}}}
    # seed 3 is the control's alone: left out, as the tests pair only the seeds every arm has
    found = {"control": {1: probe(10.0, 4.0), 2: probe(12.0, 6.0), 3: probe(99.0, 99.0)},
             "baseline": {2: probe(11.0, 5.0), 1: probe(9.0, 3.0)}}
    assert F.texts_rows(found) == [
        "| text | model | loss | calibrated loss | T | top-1 | KL(base \\|\\| ft) | calibrated retention |",
        "|---|---|---|---|---|---|---|---|",
        "| wiki | unigram | 7.00 | 7.05 | - | - | - | - |",  # under 'calibrated': its loss on the report half
        "| | base | 6.00 | 6.10 | 1.00 | 0.200 | - | - |",
        "| | baseline (2 seeds) | 10.00 +- 1.00 | 8.00 +- 1.00 | 2.00 +- 0.00 | 0.010 +- 0.000 | 4.00 +- 1.00 | -0.50 +- 0.00 |",
        "| | shuffled-target control (2 seeds) | 11.00 +- 1.00 | 9.00 +- 1.00 | 2.00 +- 0.00 | 0.010 +- 0.000 | 5.00 +- 1.00 "
        "| -0.50 +- 0.00 |"]
    assert F.texts_rows({"baseline": {1: probe(9.0, 3.0)}, "jepa": {2: probe(9.0, 3.0)}}) == []  # no seed shared


def test_figures_main_writes_the_drift_figures_into_a_folder_it_makes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import json
    from replication import figures as F
    (tmp_path / "three").mkdir()
    for arm, seed in (("baseline", 1), ("jepa", 1)):
        ft = {"drift": {"mean": 0.2}, "forgetting": 3.0, "drift_per_layer": [0.0, 0.2], "texts": {}}
        (tmp_path / "three" / f"{arm}-s{seed}-probe.json").write_text(json.dumps(
            {"texts": {}, "checkpoints": {"base": {"texts": {}}, "ft": ft}}))
    # without --drift_out, another run's figures go beside its probes, never over the first run's in results/
    F.main([f"--results={tmp_path}", "--arms_dir=three"])
    assert (tmp_path / "three" / "drift_per_layer.png").stat().st_size > 0
    assert not (tmp_path / "drift_per_layer.png").exists()
    F.main([f"--results={tmp_path}", "--arms_dir=three", f"--drift_out={tmp_path / 'new' / 'folder'}"])
    assert (tmp_path / "new" / "folder" / "drift_vs_forgetting.png").stat().st_size > 0
    assert "wrote the drift figures: baseline (1 seeds), jepa (1 seeds)" in capsys.readouterr().out


@pytest.mark.parametrize("df", sorted(CRITICAL_05))
def test_t_p_value_at_the_critical_values(df):
    assert S.t_two_sided_p(CRITICAL_05[df], df) == pytest.approx(0.05, abs=1e-6)
    assert S.t_two_sided_p(-CRITICAL_05[df], df) == pytest.approx(0.05, abs=1e-6)
    assert S.t_two_sided_p(0.0, df) == 1.0 and S.t_two_sided_p(float("inf"), df) == 0.0


def test_t_p_value_equals_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 12):
        for t in (0.1, 0.7, 1.5, 2.2, 3.9, 8.0):
            assert S.t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-12)


def test_paired_t():
    result = S.paired_t([0.1, 0.2, -0.05, 0.3, 0.15])
    assert result["mean"] == pytest.approx(0.14) and result["df"] == 4
    assert result["t"] == pytest.approx(2.4188315916278) and result["p"] == pytest.approx(0.0728550596102557)
    assert S.paired_t([0.0, 0.0, 0.0])["p"] == 1.0 and S.paired_t([0.2, 0.2])["p"] == 0.0
    with pytest.raises(ValueError):
        S.paired_t([1.0])


def test_pearson_correlation_and_its_p():
    result = S.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])  # sxy 6, sxx 10, syy 6 -> r = 6 / sqrt(60)
    assert result["r"] == pytest.approx(6 / 60 ** 0.5) and result["n"] == 5
    # the two-sided 5% critical r for n = 5 (df 3) is 0.8783 (t 3.182446 = r sqrt(3 / (1 - r^2)))
    r = 3.182446 / (3.182446 ** 2 + 3) ** 0.5
    assert S.pearson([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])["p"] == 0.0
    assert S.pearson([-1, 1, -1, 1, 0], [-1, 1, 1, -1, 0])["r"] == pytest.approx(0.0)
    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    ys = [x * r + (1 - r * r) ** 0.5 * e for x, e in zip([-2, -1, 0, 1, 2], [1.0, -2.0, 0.0, 2.0, -1.0])]
    got = S.pearson(xs, ys)  # residuals orthogonal to x with the same spread: r as built
    assert got["r"] == pytest.approx(r) and got["p"] == pytest.approx(0.05, abs=1e-6)
    assert S.pearson([1, 1, 1], [1, 2, 3])["r"] is None
    with pytest.raises(ValueError):
        S.pearson([1, 2], [1, 2])
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.pearsonr([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert result["r"] == pytest.approx(expected[0]) and result["p"] == pytest.approx(expected[1])


def test_sign_and_mcnemar_are_exact_binomials():
    assert S.sign_test([1, 2, 3, 4, 5])["p"] == 2 / 32  # the smallest p five seeds can give
    assert S.sign_test([1, -1, 0.5, 0, -2]) == {"positive": 2, "negative": 2, "p": 1.0}  # the tie is dropped
    result = S.mcnemar([1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 0, 0, 0, 0])
    assert (result["a_only"], result["b_only"]) == (4, 1) and result["p"] == pytest.approx(2 * 6 / 32)
    assert S.mcnemar([1, 0], [1, 0])["p"] == 1.0
    with pytest.raises(ValueError):
        S.mcnemar([1], [1, 0])


def test_bootstrap_interval():
    diffs = [0.1, 0.2, -0.05, 0.3, 0.15]
    lo, hi = S.bootstrap_interval(diffs)
    assert (lo, hi) == S.bootstrap_interval(diffs) and min(diffs) <= lo < 0.14 < hi <= max(diffs)
    assert S.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_learning_curve_points_and_figure(tmp_path):
    # replication/figures.py: snapshots at their step, final/ at its run's last step (from the log)
    import json
    from replication import figures as F
    (tmp_path / "curve").mkdir()
    import gzip
    for step, dfa in ((470, 0.1), (940, 0.3), ("final", 0.2)):
        (tmp_path / "curve" / f"lr1e-3-step{step}.json").write_text(json.dumps(
            {"dfa": dfa, "nontrivial/dfa": dfa / 2, "nontrivial/functional": dfa, "exact": 0.0}))
        with gzip.open(tmp_path / "curve" / f"lr1e-3-step{step}-items.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps({"prediction": p}) + "\n" for p in ("a", " ", "")))  # two empty outputs
    (tmp_path / "curve" / "lr1e-3-log.jsonl").write_text(json.dumps({"step": 1175}) + "\n")
    assert F.curves(str(tmp_path)) == {"lr1e-3": [(2.0, 0.05, 0.1), (4.0, 0.15, 0.3), (5.0, 0.1, 0.2)]}
    assert (F.curve_arm("jepa-lr3e-4"), F.curve_arm("lr3e-4"), F.curve_arm("random-base-lr1e-3")) == \
        (("jepa", "lr3e-4"), ("baseline", "lr3e-4"), ("baseline", "random-base-lr1e-3"))
    (tmp_path / "levers").mkdir()  # the curve probed at epoch 2 only: the other rows show '-'
    (tmp_path / "levers" / "probe-curve-lr1e-3.json").write_text(json.dumps(
        {"checkpoints": {"step470": {"wikitext_loss": 8.5}}}))
    assert F.curve_rows(str(tmp_path)) == ["| lr1e-3 | 2 | 0.050 | 0.100 | 0.100 | 0.000 | 2 | 8.50 |",
                                           "| lr1e-3 | 4 | 0.150 | 0.300 | 0.300 | 0.000 | 2 | - |",
                                           "| lr1e-3 | 5 | 0.100 | 0.200 | 0.200 | 0.000 | 2 | - |"]
    pytest.importorskip("matplotlib")
    F.main([f"--results={tmp_path}"])
    assert (tmp_path / "learning_curves.png").stat().st_size > 0 and not (tmp_path / "drift_per_layer.png").exists()


def test_figures_draw_each_arm_in_its_colour_and_join_each_seeds_runs(tmp_path):
    from replication import figures as F
    run = lambda d, f: {"drift": {"mean": d}, "forgetting": f, "drift_per_layer": [0.0, d]}  # noqa: E731
    data = {"baseline": {1: run(0.3, 4.0), 2: run(0.2, 3.0)}, "jepa": {1: run(0.3, 3.5), 2: run(0.25, 2.0)},
            "control": {1: run(0.1, 4.2)}}
    assert F.seed_points(data) == {1: [(0.3, 4.0), (0.1, 4.2), (0.3, 3.5)], 2: [(0.2, 3.0), (0.25, 2.0)]}
    plt = pytest.importorskip("matplotlib.pyplot")
    F.plot_drift(plt, data, str(tmp_path / "layers.png"), str(tmp_path / "scatter.png"))
    scatter = plt.gcf().axes[0]
    colours = {c.get_label(): tuple(c.get_facecolor()[0]) for c in scatter.collections}
    import matplotlib.colors
    assert colours == {F.ARM_NAMES[a]: matplotlib.colors.to_rgba(F.ARM_COLOURS[a]) for a in data}
    assert len(scatter.lines) == 2  # one grey line per seed with more than one arm
    F.plot_curves(plt, {"lr3e-4": [(1, 0.1, 0.2)], "jepa-lr3e-4": [(1, 0.1, 0.2)], "lr1e-3": [(1, 0.1, 0.2)]},
                  str(tmp_path / "curves.png"))
    lines = plt.gcf().axes[0].lines
    assert {matplotlib.colors.to_hex(ln.get_color()) for ln in lines if ln.get_label().startswith("baseline")} == \
        {matplotlib.colors.to_hex(F.ARM_COLOURS["baseline"])}
    assert {matplotlib.colors.to_hex(ln.get_color()) for ln in lines if ln.get_label().startswith("DLLM-JEPA")} == \
        {matplotlib.colors.to_hex(F.ARM_COLOURS["jepa"])}
    plt.close("all")


@pytest.mark.parametrize("df", sorted(CRITICAL_05))
def test_t_quantile_inverts_the_critical_values(df):
    assert S.t_quantile(0.975, df) == pytest.approx(CRITICAL_05[df], rel=1e-6)
    assert S.t_quantile(0.025, df) == pytest.approx(-CRITICAL_05[df], rel=1e-6)
    assert S.t_quantile(0.5, df) == pytest.approx(0.0, abs=1e-9)


def test_minimum_detectable_effect_has_its_power_in_simulation():
    """At the effect it names, a 5-pair t-test at 0.05 rejects about 80% of the time (20,000 seeded draws)."""
    import random
    rng = random.Random(0)
    sd, n = 0.039, 5
    effect = S.minimum_detectable_effect(sd, n)
    rejected = sum(S.paired_t([rng.gauss(effect, sd) for _ in range(n)])["p"] < 0.05 for _ in range(20000))
    assert 0.76 < rejected / 20000 < 0.84
    assert S.minimum_detectable_effect(sd, n, alpha=0.005) > effect  # a stricter test needs a larger effect


def test_holm_by_hand():
    # sorted: 0.005 (x4) 0.02, 0.01 (x3) 0.03, 0.03 (x2) 0.06, 0.04 (x1) 0.04 -> made monotone 0.06
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and S.holm([]) == []


def test_paired_regression_recovers_a_planted_line_and_its_test():
    dx = [0.1, 0.3, -0.2, 0.5, 0.0]
    exact = S.paired_regression(dx, [-0.4 + 2 * x for x in dx])
    assert exact["gamma"] == pytest.approx(-0.4) and exact["beta"] == pytest.approx(2.0) and exact["p"] == 0.0
    noisy = S.paired_regression(dx, [-0.4 + 2 * x + e for x, e in zip(dx, [0.05, -0.03, 0.02, -0.04, 0.0])])
    assert noisy["df"] == 3 and noisy["p"] < 0.01


def test_paired_regression_equals_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    dx = [0.1, 0.3, -0.2, 0.5, 0.0]
    noisy = S.paired_regression(dx, [-0.4 + 2 * x + e for x, e in zip(dx, [0.05, -0.03, 0.02, -0.04, 0.0])])
    fit = scipy_stats.linregress(dx, [-0.4 + 2 * x + e for x, e in zip(dx, [0.05, -0.03, 0.02, -0.04, 0.0])])
    assert noisy["gamma"] == pytest.approx(fit.intercept) and noisy["se_gamma"] == pytest.approx(fit.intercept_stderr)


def test_cluster_bootstrap_is_wider_than_items_alone_when_seeds_differ():
    """Seeds that disagree (one arm ahead at some seeds, behind at others) widen the two-stage interval; the
    same differences at every seed do not."""
    same = [[1, 0, 0, 0] * 50] * 4
    lo, hi = S.cluster_bootstrap(same, [[0] * 200] * 4)
    assert lo < 0.25 < hi and hi - lo < 0.1
    spread = [[1] * 100 + [0] * 100, [0] * 200, [1] * 100 + [0] * 100, [0] * 200]
    lo2, hi2 = S.cluster_bootstrap(spread, [[0] * 200] * 4)
    assert hi2 - lo2 > 2 * (hi - lo)
    assert S.cluster_bootstrap(spread, [[0] * 200] * 4) == (lo2, hi2)  # seeded
