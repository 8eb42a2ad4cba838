"""probe.py and metrics/forgetting.py: drift, effective rank, cosine diversity, forgetting masks, the MMLU subset, and the command
end to end on tiny checkpoints."""

import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import SHARED, needs_shared, run_script, tiny_tokenizer

import data as D
import model as M
import probe as P
from metrics import forgetting as FM



@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def tiny_pair(perturb, seed=0):
    torch.manual_seed(seed)
    base = M.Transformer(M.PRESETS["tiny"]).eval()
    ft = M.Transformer(M.PRESETS["tiny"]).eval()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(perturb * torch.randn_like(p))
    return base, ft


def samples(n=6):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 500, (int(torch.randint(40, 60, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_drift_zero_for_identical_and_grows_with_perturbation():
    s = samples()
    drifts = []
    for eps in (0.0, 0.01, 0.05):
        base, ft = tiny_pair(eps)
        a, b = P.wikitext_pass(base, s, list(range(len(s))), 4, (0.2, 0.7)), \
                P.wikitext_pass(ft, s, list(range(len(s))), 4, (0.2, 0.7))
        per_layer = P.drift(a["pooled"], b["pooled"])
        assert per_layer.shape == (M.PRESETS["tiny"].n_layers + 1,)
        drifts.append(P.regions(per_layer)["mean"])
    assert abs(drifts[0]) < 1e-6
    assert 0 < drifts[1] < drifts[2]



def test_wikitext_pass_keeps_no_autograd_graph():
    """Regression: the no_grad decorator sat on view_rates instead of wikitext_pass, so every batch's
    results held their autograd graph (all activations) until the pass ended; on the small preset the
    probe's memory grew ~200 MB a sample and 100 samples were OOM-killed at 24 GB."""
    base, _ = tiny_pair(0.0)
    assert torch.is_grad_enabled()
    out = P.wikitext_pass(base, samples(), list(range(6)), 4, (0.2, 0.7))
    for key, value in out.items():
        assert value.grad_fn is None and not value.requires_grad, key

def test_regions_split_blocks_in_thirds():
    per_layer = torch.tensor([9.0, 1, 1, 2, 2, 3, 3])  # [0] is the embedding layer, excluded
    assert P.regions(per_layer) == {"early": 1.0, "middle": 2.0, "late": 3.0, "mean": 2.0}


def test_centred_effective_rank_ignores_a_shared_offset():
    g = torch.Generator().manual_seed(0)
    spread = torch.zeros(500, 16)
    spread[:, :2] = torch.randn(500, 2, generator=g)  # two directions of variation, equal scale
    z = spread + 50.0  # and an offset every embedding shares
    assert P.effective_rank(z) == pytest.approx(1.0, abs=0.05)  # the offset dominates the uncentred spectrum
    assert P.effective_rank(z, centred=True) == pytest.approx(2.0, abs=0.1)


def test_effective_rank():
    torch.manual_seed(0)
    d = 32
    iso = torch.randn(20000, d)
    assert d * 0.95 < P.effective_rank(iso) <= d
    rank_one = torch.randn(500, 1) * torch.randn(1, d)
    assert P.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    two = torch.zeros(100, d)
    two[:50, 0], two[50:, 1] = 1.0, 1.0  # two orthogonal directions, equal energy
    assert P.effective_rank(two) == pytest.approx(2.0, abs=1e-9)


def test_cosine_diversity_and_std():
    same = torch.randn(1, 16).repeat(50, 1)
    assert P.cosine_diversity(same, 5000, 0) == pytest.approx(0.0, abs=1e-9)
    basis = torch.eye(16)
    assert P.cosine_diversity(basis, 5000, 0) == pytest.approx(1.0)
    stats = P.collapse_stats(torch.randn(4000, 8) * 2, 5000, 0)
    assert stats["std"] == pytest.approx(2.0, rel=0.05)


def test_forgetting_masks_identical_across_checkpoints(monkeypatch):
    s = samples()
    seen = []
    real_mask_view = P.jepa.mask_view

    def spy(ids, maskable, t, mask_id, noise):
        out = real_mask_view(ids, maskable, t, mask_id, noise)
        if t == P.forgetting_rate:
            seen.append(out[1].clone())
        return out

    monkeypatch.setattr(P.jepa, "mask_view", spy)
    base, ft = tiny_pair(0.05)
    P.forgetting_pass(base, s, list(range(6)), 4)
    first = list(seen)
    seen.clear()
    P.forgetting_pass(ft, s, list(range(6)), 3)  # other model, other batching: the same masks
    masks_a = [m[r, :len(s[i])] for i, (m, r) in enumerate((first[k // 4], k % 4) for k in range(6))]
    masks_b = [m[r, :len(s[i])] for i, (m, r) in enumerate((seen[k // 3], k % 3) for k in range(6))]
    for a, b in zip(masks_a, masks_b):
        assert torch.equal(a, b)
        assert not a[0]  # position 0 is never masked
        assert 0.3 < a.float().mean() < 0.7


def fake_mmlu():
    return [{"subject": f"s{k:02d}", "question": f"q{k}-{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4}
            for k in range(57) for i in range(12)]


def test_mmlu_subset_stratified_and_stable():
    qs = fake_mmlu()
    subset = P.mmlu_subset(qs, 500, seed=0)
    assert len(subset) == 500
    counts = {}
    for q in subset:
        counts[q["subject"]] = counts.get(q["subject"], 0) + 1
    assert len(counts) == 57 and set(counts.values()) == {8, 9} and sum(v == 9 for v in counts.values()) == 44
    assert P.mmlu_subset(qs, 500, seed=0) == subset
    assert len({q["question"] for q in subset}) == 500


def test_mmlu_subset_asked_for_more_than_a_subject_holds_names_the_flag():
    qs = fake_mmlu()  # 57 subjects of 12 questions
    assert len(P.mmlu_subset(qs, 57 * 12, seed=0)) == 57 * 12
    with pytest.raises(P.ConfigError, match="--mmlu_questions 685; ask for at most 684"):
        P.mmlu_subset(qs, 57 * 12 + 1, seed=0)
    with pytest.raises(P.InputError, match="--mmlu_dir"):
        P.mmlu_subset([], 10, seed=0)


@needs_shared
def test_mmlu_subset_on_real_files():
    qs = D.load_mmlu("test", os.path.join(SHARED, "mmlu"))
    subset = P.mmlu_subset(qs, 500, seed=0)
    counts = {}
    for q in subset:
        counts[q["subject"]] = counts.get(q["subject"], 0) + 1
    assert len(counts) == 57 and set(counts.values()) == {8, 9}
    assert [q["question"] for q in P.mmlu_subset(D.load_mmlu("test", os.path.join(SHARED, "mmlu")), 500, 0)] == \
        [q["question"] for q in subset]


def test_mmlu_pass_scores_the_letter_at_the_masked_position(tok):
    torch.manual_seed(0)
    model = M.Transformer(M.PRESETS["tiny"]).eval()
    letters, spaced = P.letter_ids(tok)
    qs = fake_mmlu()[:4]
    # make the model always prefer 'C' at every position: only questions with answer 2 are right
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[letters[2]] = 1.0
        model.norm.weight.fill_(1.0)
    got = P.mmlu_pass(model, tok, qs, batch=3)
    assert got == [float(q["answer"] == 2) for q in qs]


def test_probe_command_on_tiny_checkpoints(tmp_path, tok):
    base, ft = tiny_pair(0.02)
    base.save_pretrained(str(tmp_path / "base"), tokenizer=tok)
    ft.save_pretrained(str(tmp_path / "run" / "final"), tokenizer=tok)  # a train.py output directory
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"t_low": 0.1, "t_high": 0.9}))  # Wide-t
    base.save_pretrained(str(tmp_path / "same"), tokenizer=tok)
    wt = tmp_path / "wikitext"
    wt.mkdir()
    (wt / "wiki.valid.raw").write_text("".join(f" = T{i} = \n{' lines containing a number' * 12} {i} .\n"
                                               for i in range(12)))
    mm = tmp_path / "mmlu" / "test"
    mm.mkdir(parents=True)
    for k in range(3):
        (mm / f"sub{k}_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n" +
                                             "".join(f"q{i},a,b,c,d,{i % 4}\n" for i in range(5)))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": f"how many lines {i} " * 5,
                                                           "answer": "a number " * 6}) + "\n" for i in range(10)))
    (tmp_path / "code.txt").write_text("".join(f"def f{i} ( x ) : return x + {i}\n" for i in range(200)))
    (tmp_path / "one-token.txt").write_text("zq " * 3000)  # a unigram reference the random base beats
    out = tmp_path / "out"
    proc = run_script(["probe.py", f"--base={tmp_path / 'base'}", f"--checkpoints={tmp_path / 'run'},{tmp_path / 'same'}",
                       "--names=ft,same", "--ratio=ft/same", f"--wikitext_dir={wt}", f"--mmlu_dir={tmp_path / 'mmlu'}",
                       f"--forgetting_data=qa={tmp_path / 'qa.jsonl'},{tmp_path / 'code.txt'}",
                       f"--unigram_text={tmp_path / 'one-token.txt'}",
                       "--n_samples=10", "--mmlu_questions=12", "--cos_pairs=200", f"--out_dir={out}"])
    report = json.load(open(out / "probe.json"))
    same, ft_entry = report["checkpoints"]["same"], report["checkpoints"]["ft"]
    assert same["drift"]["mean"] == pytest.approx(0.0, abs=1e-6) and same["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert ft_entry["drift"]["mean"] > 0 and len(ft_entry["drift_per_layer"]) == M.PRESETS["tiny"].n_layers + 1
    assert report["drift_ratios"]["ft/same"]["mean"] is None  # the denominator does not drift
    assert report["mmlu_questions"] == 12 and 0 <= ft_entry["mmlu"] <= 1
    assert "checkpoint" in proc.stdout and "drift ratio ft/same" in proc.stdout
    assert report["complete"] is True
    # the forgetting measures on every text: the base against itself has KL 0 and retention 1
    assert list(report["texts"]) == ["wikitext", "qa", "code"] and "ret. calib." in proc.stdout
    for name, text in report["texts"].items():
        assert text["n_samples"] == 10 and text["unigram_loss"] > report["checkpoints"]["base"]["texts"][name]["token_loss"]
        s_m, f_m = same["texts"][name], ft_entry["texts"][name]
        assert s_m["kl_from_base"] == pytest.approx(0.0, abs=1e-6) and s_m["forgetting"] == pytest.approx(0.0, abs=1e-6)
        assert s_m["retention"] == pytest.approx(1.0) and s_m["retention_calibrated"] == pytest.approx(1.0)
        assert f_m["kl_from_base"] > 0 and 0 <= f_m["top1"] <= f_m["top5"] <= 1
    assert ft_entry["texts"]["wikitext"]["loss"] == ft_entry["wikitext_loss"]
    # each checkpoint's collapse views at its own training rates; a checkpoint without a run at the paper's
    assert (ft_entry["collapse"]["t_L"], ft_entry["collapse"]["t_H"]) == (0.1, 0.9)
    assert (same["collapse"]["t_L"], same["collapse"]["t_H"]) == (0.2, 0.7)
    assert ft_entry["collapse"]["z_tL"]["effective_rank_centred"] > 0
    # a second run does not replace the results unless asked to
    args = proc.args[1:]
    again = run_script(args, check=False)
    assert again.returncode == 2 and "already holds a probe (probe.json)" in again.stderr
    # a checkpoint with a NaN weight (a diverged run) is named, not probed; what was measured before it is kept
    with torch.no_grad():
        ft.blocks[0].attn.q_proj.weight[0, 0] = float("nan")
    ft.save_pretrained(str(tmp_path / "nan"), tokenizer=tok)
    failed = run_script([a.replace(str(tmp_path / "same"), str(tmp_path / "nan")) for a in args] + ["--overwrite=true"],
                        check=False)
    assert failed.returncode == 1 and "non-finite weights" in failed.stderr and "Traceback" not in failed.stderr
    partial = json.load(open(out / "probe.json"))
    assert partial["complete"] is False and set(partial["checkpoints"]) == {"base", "ft"}
    import importlib.util
    if importlib.util.find_spec("matplotlib"):  # optional: the plot is made only where it is installed
        assert (out / "drift.png").stat().st_size > 1000
    else:
        assert not (out / "drift.png").exists()


def test_two_process_probe_equals_one_process(tmp_path, tok):
    base, ft = tiny_pair(0.02)
    base.save_pretrained(str(tmp_path / "base"), tokenizer=tok)
    ft.save_pretrained(str(tmp_path / "ft"), tokenizer=tok)
    wt = tmp_path / "wikitext"
    wt.mkdir()
    (wt / "wiki.valid.raw").write_text("".join(f" lines with a vowel before a number {i} , " * 6 + "\n"
                                               for i in range(9)))
    (tmp_path / "code.txt").write_text("".join(f"def f{i} ( x ) : return x + {i}\n" for i in range(200)))
    args = ["probe.py", f"--base={tmp_path / 'base'}", f"--checkpoints={tmp_path / 'ft'}", "--names=ft",
            f"--wikitext_dir={wt}", "--mmlu_dir=none", "--n_samples=9", "--cos_pairs=100", "--batch_size=2",
            f"--forgetting_data={tmp_path / 'code.txt'}"]
    run_script([*args, f"--out_dir={tmp_path / 'one'}"])
    run_script([*args, f"--out_dir={tmp_path / 'two'}"], nproc=2, port=29652)
    a = json.load(open(tmp_path / "one" / "probe.json"))["checkpoints"]
    b = json.load(open(tmp_path / "two" / "probe.json"))["checkpoints"]
    for label in ("base", "ft"):
        assert a[label]["wikitext_loss"] == pytest.approx(b[label]["wikitext_loss"], rel=1e-5)
        assert a[label]["collapse"]["z_tL"]["effective_rank"] == pytest.approx(
            b[label]["collapse"]["z_tL"]["effective_rank"], rel=1e-5)
    assert a["ft"]["drift_per_layer"] == pytest.approx(b["ft"]["drift_per_layer"], rel=1e-5, abs=1e-9)
    for label in ("base", "ft"):
        for name in ("wikitext", "code"):
            assert a[label]["texts"][name] == pytest.approx(b[label]["texts"][name], rel=1e-5), (label, name)


@pytest.mark.parametrize("flag", ["--n_samples=0", "--forgetting_rate=1.5", "--batch_size=0"])
def test_numeric_flags_are_range_checked_before_loading(flag, tmp_path):
    # --n_samples 0 crashed after loading; --forgetting_rate 1.5 ran
    proc = run_script(["probe.py", "--base=nowhere", "--checkpoints=nowhere", flag, f"--out_dir={tmp_path}"],
                      check=False)
    assert proc.returncode == 2 and "out of range" in proc.stderr


class FrequencyLM(torch.nn.Module):
    """A crafted model: the same logits (a log-frequency table times a scale) at every masked position."""

    def __init__(self, log_q, scale=1.0):
        super().__init__()
        self.cfg = SimpleNamespace(pad_token_id=0, mask_token_id=1)
        self.head = torch.nn.Parameter(log_q * scale)

    def forward(self, ids, padding_mask=None, logits_at=None):
        return SimpleNamespace(logits=self.head.expand(int(logits_at.sum()), -1))


def calibrated_base():
    """A model that knows the samples' token frequencies (Zipf over 60 tokens), so its best temperature is
    finite (near 1), and 12 samples drawn from them."""
    q = torch.zeros(64)
    q[3:] = 1.0 / torch.arange(1, 62)
    q = q / q.sum()
    g = torch.Generator().manual_seed(0)
    s = [torch.multinomial(q, 50, replacement=True, generator=g).tolist() for _ in range(12)]
    return FrequencyLM(q.clamp(min=1e-6).log()), s


def test_forgetting_measures_of_the_base_against_itself():
    base, s = calibrated_base()
    raw = P.forgetting_pass(base, s, list(range(12)), 4, keep_logprobs=True)
    again = P.forgetting_pass(base, s, list(range(12)), 5, base_logprobs=raw.pop("logprobs"))  # other batching
    assert again["kl"].abs().max() < 1e-6
    a, b = FM.forgetting_measures(raw), FM.forgetting_measures(again)
    assert 0.5 < a["temperature"] < 2 and b["kl_from_base"] == pytest.approx(0.0, abs=1e-6)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    # temperature 1 on the odd samples is the plain loss there; the fitted one can only do better on the fit half
    one = FM.TEMPERATURES.tolist().index(1.0)
    assert (raw["ce_at_t"][1, one] / (raw["half"] == 1).sum()).item() == pytest.approx(a["loss_report_half"], rel=1e-5)
    assert FM.retention(a["token_loss"] + 1.0, a["token_loss"], b["token_loss"]) == pytest.approx(1.0)


def test_logits_times_two_change_kl_but_not_top_k_or_the_calibrated_loss():
    base, s = calibrated_base()
    sharp = FrequencyLM(base.head.detach(), scale=2.0)
    raw = P.forgetting_pass(base, s, list(range(12)), 4, keep_logprobs=True)
    other = P.forgetting_pass(sharp, s, list(range(12)), 4, base_logprobs=raw.pop("logprobs"))
    a, b = FM.forgetting_measures(raw), FM.forgetting_measures(other)
    assert torch.equal(raw["top1"], other["top1"]) and torch.equal(raw["top5"], other["top5"])
    assert b["kl_from_base"] > 0.01 and b["loss"] != pytest.approx(a["loss"], abs=0.01)
    assert b["temperature"] == 2 * a["temperature"]
    assert b["calibrated_loss"] == pytest.approx(a["calibrated_loss"], abs=1e-5)


def test_retention_is_none_where_the_base_does_not_beat_the_unigram():
    assert FM.retention(5.0, 4.0, 4.5) == pytest.approx(0.5)
    assert FM.retention(5.0, 4.0, 5.5) == pytest.approx(-0.5)  # worse than token frequencies alone
    assert FM.retention(4.0, 4.0, 3.0) is None and FM.retention(3.9, 4.0, 3.0) is None


def test_unigram_logprobs_count_with_the_prior():
    logp = FM.unigram_logprobs([[1, 1, 2], [1]], vocab_size=4)
    expected = torch.tensor([0.5, 3.5, 1.5, 0.5]) / 6.0
    assert torch.allclose(logp.exp(), expected.double())


def test_forgetting_data_names_and_samples(tmp_path, tok):
    assert FM.parse_forgetting_data("gsm=a/test.jsonl,b/all.code") == [("gsm", "a/test.jsonl"), ("all", "b/all.code")]
    with pytest.raises(P.ConfigError, match="used twice"):
        FM.parse_forgetting_data("x=a.txt,x=b.txt")
    rows = tmp_path / "t.jsonl"
    rows.write_text(json.dumps({"question": "how many lines " * 8, "answer": "twelve numbers " * 8, "n": 3}) + "\n"
                    + json.dumps({"text": "short"}) + "\n")
    assert FM.text_documents(str(rows)) == ["how many lines " * 8 + "\n\n" + "twelve numbers " * 8, "short"]
    got, cut = P.text_samples(str(rows), tok, 1, 20)  # 'short' has fewer than 32 tokens: not a sample
    assert len(got) == 1 and len(got[0]) == 20 and cut == 1
    # the cut are counted among the samples taken, not over the whole file (GSM8K test: 201 of 1,319 documents
    # were reported as cut among 100 samples)
    docs = ["word " * 12, "ab", "x " * 60]  # 49, 3 and 121 tokens
    several = tmp_path / "several.jsonl"
    several.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    got, cut = P.text_samples(str(several), tok, 1, 64)
    assert got == [D.encode_plain(tok, docs[0])] and cut == 0
    got, cut = P.text_samples(str(several), tok, 2, 40)  # 'ab' is too short: the first and the third, both cut
    assert got == [D.encode_plain(tok, docs[0])[:40], D.encode_plain(tok, docs[2])[:40]] and cut == 2
    plain = tmp_path / "code.txt"
    plain.write_text("def f ( x ) : return x + 1\n" * 40)
    got, cut = P.text_samples(str(plain), tok, 3, 16)
    ids = D.encode_plain(tok, plain.read_text())
    assert got == [ids[0:16], ids[16:32], ids[32:48]] and cut == 0
    with pytest.raises(P.ConfigError, match="--n_samples"):
        P.text_samples(str(rows), tok, 2, 20)


def test_too_little_wikitext_names_the_folder_and_the_flag(tmp_path, tok):
    (tmp_path / "wiki.valid.raw").write_text(" = Heading = \n\n" + " ".join(["the river"] * 20) + "\n short line\n")
    got, cut = P.wikitext_samples(tok, 1, 16, str(tmp_path))
    assert got == [D.encode_plain(tok, " ".join(["the river"] * 20))[:16]] and cut == 1
    message = re.escape(f"--wikitext_dir {tmp_path}) has only 1 paragraphs") + ".*--n_samples"
    with pytest.raises(P.InputError, match=message):
        P.wikitext_samples(tok, 2, 16, str(tmp_path))
