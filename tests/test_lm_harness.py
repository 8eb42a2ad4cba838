"""lm_harness/: the lm-evaluation-harness model. The masked-diffusion estimate against its exact expectation
(every mask of a short continuation enumerated), its independence of the batch, generation equal to the
sampler, and lm-eval end to end on local tasks (a generation task and a multiple-choice one) in this
process and through `python -m lm_harness` on two ranks."""

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_script, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is optional (requirements-lm-eval.txt); CI installs it")
from lm_eval.api.instance import Instance  # noqa: E402

import model as M  # noqa: E402
from lm_harness import diffusion_lm as H  # noqa: E402
from sampler import generate  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "ckpt"
    torch.manual_seed(0)
    net = M.Transformer(replace(M.PRESETS["tiny"], n_layers=2))
    with torch.no_grad():  # sharper than the random init, so the continuations' likelihoods differ
        net.lm_head.weight.mul_(30)
    net.save_pretrained(str(path), tokenizer=tiny_tokenizer())
    return str(path)


@pytest.fixture(scope="module")
def lm(checkpoint):
    return H.DiffusionLM(checkpoint=checkpoint, gen_length=8, steps=8, block_length=8, mc_num=16, mc_batch=4,
                         batch_size=2, device="cpu")


def request(kind, args, doc_id=0, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx,
                    metadata=("task", doc_id, 1))


def exact_bound(model, prefix, target):
    """-E_l E_S[(L / l) sum_{i in S} CE_i]: every non-empty mask of the target, weighted as the estimate
    draws it (l uniform on 1..L, then a uniform set of l positions)."""
    L, expected = len(target), 0.0
    for subset in itertools.chain.from_iterable(itertools.combinations(range(L), l) for l in range(1, L + 1)):
        masked = torch.zeros(1, len(prefix) + L, dtype=torch.bool)
        masked[0, [len(prefix) + i for i in subset]] = True
        seq = torch.tensor([prefix + target])
        logits = model(torch.where(masked, model.cfg.mask_token_id, seq), logits_at=masked).logits
        ce = F.cross_entropy(logits, seq[masked], reduction="sum").item()
        expected += (1 / L) / math.comb(L, len(subset)) * (L / len(subset)) * ce
    return -expected


def test_the_estimate_is_unbiased_for_the_exact_bound(lm):
    model = lm.model
    prefix, target = [2, 40, 41, 42], [50, 51, 52, 53]
    with torch.no_grad():
        exact = exact_bound(model, prefix, target)
        rounds = [H.masked_bound(model, prefix, target, 4, 4, torch.Generator().manual_seed(s)) for s in range(400)]
    mean = sum(rounds) / len(rounds)
    se = (sum((r - mean) ** 2 for r in rounds) / (len(rounds) - 1) / len(rounds)) ** 0.5
    assert abs(mean - exact) < 4 * se and se < 0.05 * abs(exact)  # four standard errors; the test can see a bias
    # classifier-free guidance (the context masked in the unconditional copy) changes the estimate
    with torch.no_grad():
        cfg_free = H.masked_bound(model, prefix, target, 4, 4, torch.Generator().manual_seed(0), cfg_scale=0.0)
        guided = H.masked_bound(model, prefix, target, 4, 4, torch.Generator().manual_seed(0), cfg_scale=1.0)
    assert cfg_free != guided


def test_a_requests_estimate_does_not_depend_on_its_batch_or_order(lm):
    a = request("loglikelihood", ("Description: lines with a number", " .*[0-9].*"), doc_id=0)
    b = request("loglikelihood", ("Description: lines ending in x", " .*x"), doc_id=1)
    together = lm.loglikelihood([a, b])
    assert lm.loglikelihood([b]) == [together[1]] and lm.loglikelihood([b, a]) == together[::-1]
    assert all(greedy is False for _, greedy in together)  # the greedy check is off unless asked


def test_the_greedy_check_is_llada_suffix_greedy_prediction(lm):
    # LLaDA's rule written out: fill the target's masks one token a step, the most confident first
    prefix, n = [2, 40, 41, 42], 3
    seq = torch.tensor([prefix + [lm.model.cfg.mask_token_id] * n])
    with torch.no_grad():
        for _ in range(n):
            masked = seq == lm.model.cfg.mask_token_id
            logits = lm.model(seq).logits[masked]
            x0 = logits.argmax(-1)
            best = torch.softmax(logits.float(), -1).gather(-1, x0[:, None])[:, 0].argmax()
            seq[0, masked[0].nonzero()[best, 0]] = x0[best]
        greedy = seq[0, len(prefix):].tolist()
        assert lm.is_greedy(prefix, greedy)
        assert not lm.is_greedy(prefix, greedy[:-1] + [(greedy[-1] + 1) % 500 + 3])


def test_generation_is_the_samplers_cut_at_the_stop_strings(lm):
    contexts = ["Description: lines with a vowel\nRegex:", "Description: a"]
    reqs = [request("generate_until", (c, {"until": ["\n"]}), doc_id=i) for i, c in enumerate(contexts)]
    got = lm.generate_until(reqs)
    for context, text in zip(contexts, got):
        ids = generate(lm.model, [lm.encode(context)], steps=8, gen_length=8, block_length=8,
                       stop_ids={lm.model.cfg.eos_token_id})[0].tolist()
        expected = lm.tokenizer.decode([t for t in ids if t != lm.model.cfg.eos_token_id], skip_special_tokens=True)
        assert text == expected.split("\n")[0]
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling .* probe.py"):
        lm.loglikelihood_rolling([request("loglikelihood_rolling", ("some text",))])


def write_tasks(folder):
    """A generation task and a multiple-choice task, as lm-eval YAML over JSONL files written here."""
    folder.mkdir(exist_ok=True)
    rows = [{"input": f"lines with {w}", "output": f".*{w}.*", "choices": [f".*{w}.*", "x", "[0-9]"], "label": 0}
            for w in ("a", "b", "dog", "cat")]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n"
              "test_split: test\n")
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common + "output_type: generate_until\ndoc_to_text: \"Description: {{input}}\\nRegex:\"\n"
        "doc_to_target: \"{{output}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: \"Description: {{input}}\\nRegex:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")


def test_lm_eval_end_to_end_in_process_and_on_two_ranks(lm, checkpoint, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    write_tasks(tmp_path / "tasks")
    here = simple_evaluate(model=lm, tasks=["tiny_gen", "tiny_mc"],
                           task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True)
    gen, mc = here["results"]["tiny_gen"], here["results"]["tiny_mc"]
    assert 0 <= gen["exact_match,none"] <= 1 and 0 <= mc["acc,none"] <= 1
    scored = here["samples"]["tiny_mc"]
    assert len(scored) == 4 and all(len(s["filtered_resps"]) == 3 for s in scored)
    # the command users run, on two ranks: each scores its shard; the same numbers as one process
    out = tmp_path / "two"
    run_script(["-m", "lm_harness", "--model", "dllm_jepa", "--model_args",
                f"checkpoint={checkpoint},gen_length=8,steps=8,block_length=8,mc_num=16,mc_batch=4",
                "--tasks", "tiny_gen,tiny_mc", "--include_path", str(tmp_path / "tasks"), "--batch_size", "2",
                "--output_path", str(out), "--log_samples"], nproc=2, port=29691, timeout=600)
    results = json.load(open(next(out.rglob("results_*.json"))))["results"]
    assert results["tiny_gen"]["exact_match,none"] == gen["exact_match,none"]
    assert results["tiny_mc"]["acc,none"] == mc["acc,none"]
    two = [json.loads(line) for line in open(next(out.rglob("samples_tiny_mc_*.jsonl")))]
    one = {s["doc_id"]: s["filtered_resps"] for s in scored}
    assert sorted(s["doc_id"] for s in two) == [0, 1, 2, 3]
    for s in two:  # every log-likelihood (the samples file writes them as text); the same draws, so equal up to
        # the float rounding of another thread count (pytest's process may run 2 threads, the ranks run 1)
        assert [float(logprob) for logprob, _ in s["filtered_resps"]] == \
            pytest.approx([lp for lp, _ in one[s["doc_id"]]], rel=1e-6)


def test_an_instruct_checkpoint_without_the_chat_template_is_named(checkpoint, tmp_path, capsys):
    import shutil
    instruct = tmp_path / "tiny-Instruct"
    shutil.copytree(checkpoint, instruct)
    lm = H.DiffusionLM(checkpoint=str(instruct), gen_length=8, device="cpu")
    lm.encode("Description: a")
    lm.encode("Description: b")
    err = capsys.readouterr().err
    assert err.count("expects chat prompts") == 1 and "pass lm-eval's --apply_chat_template" in err
    H.DiffusionLM(checkpoint=checkpoint, gen_length=8, device="cpu").encode("Description: a")
    assert "expects chat prompts" not in capsys.readouterr().err


def test_a_mistake_in_the_model_args_is_one_line(checkpoint, tmp_path):
    # the model's ConfigError went through lm-eval's command line as a traceback
    write_tasks(tmp_path / "tasks")
    proc = run_script(["-m", "lm_harness", "--model", "dllm_jepa", "--model_args",
                       f"checkpoint={checkpoint},mc_num=3,mc_batch=2", "--tasks", "tiny_mc",
                       "--include_path", str(tmp_path / "tasks")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lm_harness: mc_num=3 must be a positive multiple of mc_batch=2" in proc.stderr
