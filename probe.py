"""
The paper's mechanism analysis (§4.3, §5, A.7; Tables 3, 4, 13; Fig. 2) as one command.

  python probe.py --base out-tiny/base --checkpoints out-tiny --wikitext_dir wikitext-103-raw
  torchrun --nproc_per_node 8 probe.py --base GSAI-ML/LLaDA-8B-Base --checkpoints out-jepa,out-baseline \
      --names jepa,baseline --ratio jepa/baseline

For each fine-tuned checkpoint against the base:
  drift       per layer, 1 - cos(mean-pooled hidden state of base, of fine-tuned), averaged over the WikiText
              samples; the early / middle / late thirds of the blocks and the mean over blocks; ratios
              between named checkpoints (e.g. jepa / baseline, Fig. 2B and D)
  forgetting  WikiText diffusion loss at 50% masking, identical masks for every checkpoint, minus the base's;
              on WikiText and on every --forgetting_data text, at the same masked positions, what a loss alone
              cannot tell apart (a model that kept what it knew, or one whose logits only got sharper or flatter):
              KL(base || fine-tuned), top-1 and top-5 accuracy, the loss at one temperature fitted on the even
              samples and reported on the odd ones, a unigram reference (--unigram_text's token frequencies), and
              retention = (unigram - fine-tuned) / (unigram - base) where the base beats the unigram
  collapse    for z_tL and z_tH (the checkpoint's own pooled embeddings of views masked at t_L and t_H):
              mean per-dimension std, effective rank (sum s)^2 / sum s^2, cosine diversity 1 - mean |cos| over
              5,000 random pairs (A.7, Table 13), for the base too
  mmlu        accuracy on a 500-question stratified subset (8-9 per subject, fixed seed, the same items for
              every model), from the prediction at one masked answer position over the four choice letters
Writes <out_dir>/probe.json, prints a table, and plots per-layer drift to <out_dir>/drift.png when
matplotlib is installed. Each rank takes its share of samples and questions; rank 0 gathers and writes.
"""

import os
import random
import sys

import torch
import torch.nn.functional as F

import data
import jepa
import model as modellib
from configurator import SEED_RANGE, check_ranges, configure, setting_keys
from harness.errors import ConfigError, InputError, read_text
from metrics.forgetting import (TEMPERATURES, forgetting_measures, parse_forgetting_data, retention, text_documents,
                                unigram_logprobs)
from harness.outputs import prepare_output_dir, refuse_used, write_json
from harness.run_folder import run_config
from harness.runtime import (DIST_TIMEOUT, all_gather_objects, close_distributed, init_distributed, resolve_dtype,
                             run_main)

# -----------------------------------------------------------------------------
# settings
base = ""  # the pre-trained checkpoint (hub id, release directory or train.py output's base/)
trust_remote_code = False  # run a tokenizer shipped as code beside the checkpoint (Dream's): for sources you trust
checkpoints = ""  # comma-separated fine-tuned checkpoints (train.py output directories work)
names = ""  # comma-separated names for them; default: the paths
ratio = ""  # comma-separated 'a/b' pairs of names: drift ratios (e.g. jepa/baseline)
wikitext_dir = ""  # wiki.valid.raw; empty = the hub
forgetting_data = ""  # more texts for the forgetting measures, comma-separated name=path (or a bare path: the
#                       file's name): .jsonl (a row's "text", else its string fields) or plain text
unigram_text = ""  # the unigram reference's token counts: comma-separated files / folders / .jsonl ("text" per
#                    row), e.g. the base's pretraining corpus; empty = each probed text's own samples (in-sample)
mmlu_dir = ""  # MMLU csv folders; empty = the hub; 'none' skips MMLU
n_samples = 100  # WikiText samples (paper: 100)
sample_len = 256  # tokens per sample; longer paragraphs are cut here (the count is reported)
forgetting_rate = 0.5  # masking rate of the forgetting probe
t_low = 0.0  # the collapse probe's views; 0 = each checkpoint's own t_L (its train_config.json), else the paper's
t_high = 0.0  # likewise t_H: Table 13's Wide-t rows are probed at 0.1 / 0.9, the aggressive ones at 0.2 / 0.7
cos_pairs = 5000
mmlu_questions = 500
batch_size = 8
seed = 0
dtype = "auto"  # the weights' dtype: auto = bfloat16 on GPU, float32 on CPU
device = "auto"
out_dir = "probe"
overwrite = False  # true: replace an earlier probe.json in out_dir
dist_timeout = DIST_TIMEOUT  # seconds a rank waits for the others in a collective
KEYS = setting_keys(globals())
# the one line Ctrl-C prints (harness/runtime.run_main): what was kept, and how to go on
INTERRUPTED = "interrupted: nothing was written; run it again"

MMLU_LETTERS = "ABCD"

# -----------------------------------------------------------------------------
# metrics


def mean_pool(hidden, keep):
    """Mean over kept positions, per sample: (B, T, D) -> (B, D), float32."""
    keep = keep.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def drift(pooled_base, pooled_ft):
    """1 - cos per layer, averaged over samples. Inputs (L, N, D) -> (L,)."""
    return (1.0 - F.cosine_similarity(pooled_base.double(), pooled_ft.double(), dim=-1)).mean(dim=1)


def regions(per_layer):
    """Early / middle / late thirds of the blocks (hidden_states[1:]; [0] is the embedding) and the mean."""
    blocks = per_layer[1:]
    thirds = torch.tensor_split(blocks, 3)
    return {"early": thirds[0].mean().item(), "middle": thirds[1].mean().item(), "late": thirds[2].mean().item(),
            "mean": blocks.mean().item()}


def effective_rank(z, centred=False):
    """(sum s)^2 / sum s^2 over the singular values of the (N, D) embedding matrix (A.7). The paper does not
    say whether it centres the embeddings first; centred, a common offset shared by every embedding (one
    large singular value) no longer counts as a direction, so both are reported."""
    z = z.double()
    if centred:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    return (s.sum() ** 2 / (s ** 2).sum()).item()


def cosine_diversity(z, n_pairs, seed):
    """1 - mean |cos(z_i, z_j)| over n_pairs random pairs i != j (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, z.shape[0], (n_pairs,), generator=g)
    j = (i + torch.randint(1, z.shape[0], (n_pairs,), generator=g)) % z.shape[0]
    return 1.0 - F.cosine_similarity(z[i].double(), z[j].double(), dim=-1).abs().mean().item()


def collapse_stats(z, n_pairs, seed):
    return {"std": z.double().std(dim=0).mean().item(), "effective_rank": effective_rank(z),
            "effective_rank_centred": effective_rank(z, centred=True), "cos_diversity": cosine_diversity(z, n_pairs, seed)}


# -----------------------------------------------------------------------------
# data


def first_samples(texts, tokenizer, n, length):
    """The first n of the texts that have at least 32 tokens, as token ids (BOS first where the tokenizer has a
    distinct one), each cut to `length` tokens: (samples, how many of those samples were cut). Fewer than n
    where the texts run out; texts after the n-th are never tokenized."""
    samples, cut = [], 0
    for text in texts:
        if len(samples) == n:
            break
        ids = data.encode_plain(tokenizer, text)
        if len(ids) >= 32:
            cut += len(ids) > length
            samples.append(ids[:length])
    return samples, cut


def wikitext_samples(tokenizer, n, length, data_dir):
    """The first n WikiText-103 validation paragraphs of at least 32 tokens (first_samples): (samples, number
    cut)."""
    samples, cut = first_samples(data.load_wikitext(data_dir), tokenizer, n, length)
    if len(samples) < n:
        raise InputError(f"WikiText (--wikitext_dir {data_dir or '(empty: the hub)'}) has only {len(samples)} "
                         f"paragraphs of 32+ tokens; {n} asked for (--n_samples)")
    return samples, cut


def text_samples(path, tokenizer, n, length):
    """The first n samples of one --forgetting_data text as token ids. A .jsonl file: its documents
    (text_documents) of at least 32 tokens, cut to `length`, as WikiText's paragraphs (first_samples); anything
    else is plain text, read whole and cut into consecutive windows of `length` tokens (BOS first where the
    tokenizer has one). Returns (samples, number cut)."""
    if path.endswith(".jsonl"):
        samples, cut = first_samples(text_documents(path), tokenizer, n, length)
    else:
        ids = data.encode_plain(tokenizer, read_text(path, "--forgetting_data file"))
        samples, cut = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:n], 0
    if len(samples) < n:
        raise ConfigError(f"--forgetting_data {path}: {len(samples)} samples of {length} tokens, {n} asked for "
                          "(--n_samples)")
    return samples, cut


def mmlu_subset(questions, n, seed):
    """A stratified subset: n // n_subjects per subject, one more for n % n_subjects subjects drawn with the
    seed; items drawn with the seed. Deterministic, so every model sees the same items."""
    by_subject = {}
    for q in questions:
        by_subject.setdefault(q["subject"], []).append(q)
    subjects = sorted(by_subject)
    if not subjects:
        raise InputError("the MMLU files hold no questions (--mmlu_dir; 'none' skips MMLU)")
    rng = random.Random(seed)
    per, extra = divmod(n, len(subjects))
    plus_one = set(rng.sample(subjects, extra))
    chosen = []
    for s in subjects:
        k = per + (s in plus_one)
        if len(by_subject[s]) < k:
            most = len(subjects) * min(len(qs) for qs in by_subject.values())
            raise ConfigError(f"MMLU subject {s} has {len(by_subject[s])} questions, {k} needed for --mmlu_questions "
                              f"{n}; ask for at most {most}")
        chosen += rng.sample(by_subject[s], k)
    return chosen


def mmlu_prompt(q):
    choices = "".join(f"{letter}. {c}\n" for letter, c in zip(MMLU_LETTERS, q["choices"]))
    subject = q["subject"].replace("_", " ")
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{q['question']}\n{choices}Answer:")


def letter_ids(tokenizer):
    """Token ids of the four answer letters as they follow 'Answer:', and whether the space goes with the
    prompt: ' A' when that is one token (LLaDA's and Dream's BPE), else 'A' after a spaced prompt."""
    spaced = [tokenizer.encode(" " + c, add_special_tokens=False) for c in MMLU_LETTERS]
    if all(len(t) == 1 for t in spaced):
        return [t[0] for t in spaced], False
    bare = [tokenizer.encode(c, add_special_tokens=False) for c in MMLU_LETTERS]
    if all(len(t) == 1 for t in bare):
        return [t[0] for t in bare], True
    raise ValueError("the tokenizer has no single-token answer letters")


# -----------------------------------------------------------------------------
# model passes


def pad_batch(samples, pad_id, dev):
    T = max(len(s) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(samples), T, dtype=torch.bool)
    for b, s in enumerate(samples):
        ids[b, :len(s)] = torch.tensor(s)
        real[b, :len(s)] = True
    return ids.to(dev), real.to(dev)


def view_rates(ckpt_dir):
    """(t_L, t_H) for a checkpoint's collapse probe: the flags when given, else the rates it was trained with
    (train_config.json of its run), else the paper's aggressive 0.2 / 0.7."""
    config = run_config(ckpt_dir)
    return (t_low or config.get("t_low", jepa.T_LOW)), (t_high or config.get("t_high", jepa.T_HIGH))


@torch.no_grad()
def wikitext_pass(model, samples, indices, batch, rates):
    """Per sample: pooled hidden states of every layer (L, N, D) and the pooled z_tL, z_tH of the collapse
    probe's views. Masks come from jepa.view_noise keyed by the sample's index, so every checkpoint sees
    identical masks. Position 0 is never masked (Dream cannot predict it)."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    pooled, z_low, z_high = [], [], []
    for start in range(0, len(samples), batch):
        chunk, idx = samples[start:start + batch], indices[start:start + batch]
        ids, real = pad_batch(chunk, cfg.pad_token_id, dev)
        out = model(ids, padding_mask=real, logits_at=torch.zeros_like(real), output_hidden_states=True)
        pooled.append(torch.stack([mean_pool(h, real) for h in out.hidden_states]).cpu())
        noise = jepa.view_noise(idx, ids.shape[1], seed + 1, sample_len)  # views of the collapse probe
        for t, noise_row, store in ((rates[0], noise.context, z_low), (rates[1], noise.target, z_high)):
            view, masked = jepa.mask_view(ids, maskable_positions(real), t, cfg.mask_token_id, noise_row)
            hidden = model(view, padding_mask=real, logits_at=torch.zeros_like(real)).hidden
            store.append(jepa.pool(hidden, real & ~masked).cpu())
    return {"pooled": torch.cat(pooled, dim=1), "z_low": torch.cat(z_low), "z_high": torch.cat(z_high)}


def maskable_positions(real):
    """Every real position but the first: Dream predicts position i from i - 1, so it cannot predict 0."""
    maskable = real.clone()
    maskable[:, 0] = False
    return maskable


@torch.no_grad()
def forgetting_pass(model, samples, indices, batch, base_logprobs=None, keep_logprobs=False):
    """The forgetting probe on one text: the sequence is masked at forgetting_rate with the masks keyed by
    each sample's index (identical for every checkpoint, whatever the batching) and predicted at the masked
    positions. Returns per sample 'loss' (N,); per masked position, in this rank's order, 'ce', 'top1', 'top5',
    'half' (the sample's index parity: 0 fits the temperature, 1 reports it) and, given the base's log
    probabilities at the same positions, 'kl' = KL(base || this model); 'ce_at_t' (2, len(TEMPERATURES)), the
    loss summed per half at every temperature; with keep_logprobs, 'logprobs' (positions, V) for the base,
    kept to compare each fine-tuned model with (n_samples x sample_len x forgetting_rate x V floats in all)."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    out = {k: [] for k in ("loss", "gold", "ce", "top1", "top5", "half", "kl", "logprobs")}
    ce_at_t, offset = torch.zeros(2, len(TEMPERATURES), dtype=torch.float64), 0
    for start in range(0, len(samples), batch):
        chunk, idx = samples[start:start + batch], indices[start:start + batch]
        ids, real = pad_batch(chunk, cfg.pad_token_id, dev)
        noise = jepa.view_noise(idx, ids.shape[1], seed, sample_len)
        view, masked = jepa.mask_view(ids, maskable_positions(real), forgetting_rate, cfg.mask_token_id, noise.context)
        logits = model(view, padding_mask=real, logits_at=masked).logits.float()
        gold = ids[masked]
        out["gold"].append(gold.cpu())
        out["loss"].append(jepa.sequence_losses(logits, gold, masked)[0].cpu())
        logp = F.log_softmax(logits, dim=-1)
        out["ce"].append(-logp.gather(1, gold[:, None])[:, 0].cpu())
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        out["top1"].append((top5[:, 0] == gold).cpu())
        out["top5"].append((top5 == gold[:, None]).any(-1).cpu())
        half = (torch.tensor(idx, device=dev) % 2)[masked.nonzero()[:, 0]]
        out["half"].append(half.cpu())
        gold_logit = logits.gather(1, gold[:, None])[:, 0].double()
        for k, t in enumerate(TEMPERATURES.tolist()):
            ce_t = torch.logsumexp(logits / t, dim=-1).double() - gold_logit / t
            ce_at_t[:, k] += torch.stack([ce_t[half == h].sum() for h in (0, 1)]).cpu()
        if base_logprobs is not None:
            b = base_logprobs[offset:offset + len(gold)].to(dev)
            out["kl"].append((b.exp() * (b - logp)).sum(-1).cpu())
        if keep_logprobs:
            out["logprobs"].append(logp.cpu())
        offset += len(gold)
    joined = {k: torch.cat(v) for k, v in out.items() if v}
    return {**joined, "ce_at_t": ce_at_t}


@torch.no_grad()
def mmlu_pass(model, tokenizer, questions, batch):
    """1 where the most likely of the four letters at the masked answer position is the gold one."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    letters, space_in_prompt = letter_ids(tokenizer)
    correct = []
    for start in range(0, len(questions), batch):
        chunk = questions[start:start + batch]
        prompts = [data.encode_plain(tokenizer, mmlu_prompt(q) + (" " if space_in_prompt else ""))
                   + [cfg.mask_token_id] for q in chunk]
        ids, real = pad_batch(prompts, cfg.pad_token_id, dev)
        at = torch.zeros_like(real)
        at[torch.arange(len(chunk)), torch.tensor([len(p) - 1 for p in prompts])] = True
        logits = model(ids, padding_mask=real, logits_at=at).logits[:, letters]
        correct += (logits.argmax(-1).cpu() == torch.tensor([q["answer"] for q in chunk])).float().tolist()
    return correct


# -----------------------------------------------------------------------------
# the command


def main(argv):
    cfg = configure(globals(), KEYS, argv)
    labels, paths, pairs = validate()
    world, rank, dev = init_distributed(device, dist_timeout)
    model_dtype = resolve_dtype(dtype, dev)
    master = rank == 0
    check_out_dir()

    base_dir = modellib.resolve_checkpoint_dir(base)
    tokenizer = modellib.load_tokenizer(base_dir, trust_remote_code=trust_remote_code)
    texts = load_texts(tokenizer, master)
    questions = [] if mmlu_dir == "none" else mmlu_subset(data.load_mmlu("test", mmlu_dir or None), mmlu_questions, seed)
    mine = {name: list(range(rank, len(t["samples"]), world)) for name, t in texts.items()}
    my_questions = list(range(rank, len(questions), world))

    results, report, base_logprobs = {}, None, {}
    from tqdm import tqdm
    for label, path in tqdm([("base", base)] + list(zip(labels, paths)), disable=not master, desc="checkpoints"):
        results[label], vocab_size = probe_checkpoint(path, label == "base", tokenizer, texts, mine,
                                                      [questions[i] for i in my_questions], base_logprobs,
                                                      model_dtype, dev, world)
        if label == "base" and master:
            unigrams = unigram_models(texts, vocab_size)
        if master:  # what is measured so far is on disk: a crash later keeps it
            head = {"config": cfg, "n_samples": len(texts["wikitext"]["samples"]),
                    "samples_cut_to_sample_len": texts["wikitext"]["cut"], "mmlu_questions": len(questions)}
            report = build_report(head, results, pairs, text_summaries(texts, unigrams, results["base"]["texts"]),
                                  complete=len(results) == len(labels) + 1)
            write_report(report)
    close_distributed(world)
    if master:
        print_table(report)
        plot_drift(report, os.path.join(out_dir, "drift.png"))
        print(f"wrote {os.path.join(out_dir, 'probe.json')}")


def validate():
    """Every flag checked before anything is loaded; returns (names, checkpoint paths, ratio pairs)."""
    paths = [p for p in checkpoints.split(",") if p]
    labels = [n for n in names.split(",") if n] or paths
    if not base or not paths:
        raise ConfigError("need --base and --checkpoints (comma-separated)")
    if len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} names for {len(paths)} checkpoints")
    check_ranges(globals(), {"n_samples": (1, None), "sample_len": (2, None), "forgetting_rate": (0.01, 1.0),
                             "cos_pairs": (1, None), "mmlu_questions": (0, None), "batch_size": (1, None),
                             "seed": SEED_RANGE})
    if not (0 <= t_low <= 1 and 0 <= t_high <= 1):
        raise ConfigError(f"--t_low and --t_high must be in [0, 1] (0 = the checkpoint's own); got {t_low}, {t_high}")
    pairs = [r.split("/") for r in ratio.split(",") if r]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(labels):
            raise ConfigError(f"--ratio pairs are name/name over {labels}; got {'/'.join(pair)}")
    return labels, paths, pairs


def probe_checkpoint(path, is_base, tokenizer, texts, mine, my_questions, base_logprobs, model_dtype, dev, world):
    """(measures, vocabulary size) of one checkpoint, gathered from every rank in sample order: pooled hidden
    states per layer and the pooled views (WikiText), MMLU's per-question results, and each text's forgetting
    measures. mine: this rank's sample indices per text. The base comes first: its log-probabilities at the
    masked positions are kept in base_logprobs for every later checkpoint to be compared with."""
    ckpt_dir = modellib.resolve_checkpoint_dir(path)
    model = modellib.load_for_inference(ckpt_dir, dtype=model_dtype, device=dev)
    rates = view_rates(ckpt_dir)
    wikitext = [texts["wikitext"]["samples"][i] for i in mine["wikitext"]]
    wt = wikitext_pass(model, wikitext, mine["wikitext"], batch_size, rates)
    forget = {}
    for name, text in texts.items():
        forget[name] = forgetting_pass(model, [text["samples"][i] for i in mine[name]], mine[name], batch_size,
                                       base_logprobs.get(name), keep_logprobs=is_base)
        if is_base:
            base_logprobs[name] = forget[name].pop("logprobs")
    mm = mmlu_pass(model, tokenizer, my_questions, batch_size)
    vocab_size = model.cfg.vocab_size
    del model
    parts = all_gather_objects((mine["wikitext"], wt, mm, forget), world > 1)
    order = torch.tensor([i for p in parts for i in p[0]]).argsort()
    return {
        "pooled": torch.cat([p[1]["pooled"] for p in parts], dim=1)[:, order],
        "z_low": torch.cat([p[1]["z_low"] for p in parts])[order],
        "z_high": torch.cat([p[1]["z_high"] for p in parts])[order],
        "mmlu": [c for p in parts for c in p[2]],
        "texts": {name: join_ranks([p[3][name] for p in parts]) for name in texts},
        "rates": rates,
    }, vocab_size


def load_texts(tokenizer, master):
    """The probed texts: WikiText first, then --forgetting_data's, as {name: {source, samples, cut}}."""
    samples, cut = wikitext_samples(tokenizer, n_samples, sample_len, wikitext_dir or None)
    texts = {"wikitext": {"source": wikitext_dir or "Salesforce/wikitext", "samples": samples, "cut": cut}}
    for name, path in parse_forgetting_data(forgetting_data):
        samples, cut = text_samples(path, tokenizer, n_samples, sample_len)
        texts[name] = {"source": path, "samples": samples, "cut": cut}
    for name, t in texts.items():
        if master:
            print(f"{name}: {len(t['samples'])} samples, {t['cut']} of them cut to sample_len={sample_len} tokens")
    return texts


def unigram_models(texts, vocab_size):
    """{text name: unigram log probabilities}: one model of --unigram_text for every text, else each text's
    own samples."""
    if unigram_text:
        tokenizer = modellib.load_tokenizer(modellib.resolve_checkpoint_dir(base),
                                            trust_remote_code=trust_remote_code)
        documents = data.read_documents([p for p in unigram_text.split(",") if p], "--unigram_text")
        shared = unigram_logprobs((data.encode_plain(tokenizer, d) for d in documents), vocab_size)
        return {name: shared for name in texts}
    return {name: unigram_logprobs(t["samples"], vocab_size) for name, t in texts.items()}


def join_ranks(parts):
    """forgetting_pass's outputs of every rank as one: per-sample losses in sample order (each rank took
    every world-th sample), per-position values concatenated, the per-temperature sums added."""
    world = len(parts)
    losses = [p["loss"] for p in parts]
    n = sum(len(x) for x in losses)
    loss = torch.empty(n)
    for r, x in enumerate(losses):
        loss[r::world] = x
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in ("loss", "ce_at_t")}
    return {**joined, "loss": loss, "ce_at_t": sum(p["ce_at_t"] for p in parts)}


def text_summaries(texts, unigrams, base_raw):
    """probe.json's "texts": per probed text its source, samples, masked positions and the unigram
    reference's loss there (all of them, and the odd samples' where the calibrated loss is reported)."""
    out = {}
    for name, t in texts.items():
        raw = base_raw[name]
        unigram_ce = -unigrams[name][raw["gold"]]
        out[name] = {"source": t["source"], "n_samples": len(t["samples"]), "samples_cut_to_sample_len": t["cut"],
                     "masked_positions": len(raw["gold"]),
                     "unigram_text": unigram_text or "the probed samples themselves",
                     "unigram_loss": unigram_ce.mean().item(),
                     "unigram_loss_report_half": unigram_ce[raw["half"] == 1].mean().item()}
    return out


def build_report(head, results, pairs, texts, complete):
    """probe.json's content from the checkpoints measured so far (base first); 'complete' says whether
    every checkpoint is in."""
    report = {**head, "complete": complete, "texts": texts, "checkpoints": {}}
    base_res = results["base"]
    for label, res in results.items():
        measures = {name: forgetting_measures(raw) for name, raw in res["texts"].items()}
        entry = {"wikitext_loss": measures["wikitext"]["loss"], "texts": measures,
                 "collapse": {"t_L": res["rates"][0], "t_H": res["rates"][1],
                              "z_tL": collapse_stats(res["z_low"], cos_pairs, seed),
                              "z_tH": collapse_stats(res["z_high"], cos_pairs, seed)}}
        if res["mmlu"]:
            entry["mmlu"] = sum(res["mmlu"]) / len(res["mmlu"])
        if label != "base":
            per_layer = drift(base_res["pooled"], res["pooled"])
            entry["drift_per_layer"] = per_layer.tolist()
            entry["drift"] = regions(per_layer)
            entry["forgetting"] = entry["wikitext_loss"] - report["checkpoints"]["base"]["wikitext_loss"]
            for name, m in measures.items():
                b, u = report["checkpoints"]["base"]["texts"][name], texts[name]
                m["forgetting"] = m["loss"] - b["loss"]
                m["retention"] = retention(u["unigram_loss"], b["token_loss"], m["token_loss"])
                m["retention_calibrated"] = retention(u["unigram_loss_report_half"], b["calibrated_loss"],
                                                      m["calibrated_loss"])
        report["checkpoints"][label] = entry
    report["drift_ratios"] = {}
    for a, b in pairs:
        if a not in report["checkpoints"] or b not in report["checkpoints"]:
            continue
        da, db = report["checkpoints"][a]["drift"], report["checkpoints"][b]["drift"]
        # None where the denominator's drift is zero up to rounding (identical checkpoints)
        report["drift_ratios"][f"{a}/{b}"] = {k: da[k] / db[k] if abs(db[k]) > 1e-9 else None for k in da}
    return report


def write_report(report):
    write_json(os.path.join(out_dir, "probe.json"), report)


def check_out_dir():
    """Before any pass: out_dir is writable and holds no probe.json, unless --overwrite=true."""
    prepare_output_dir(out_dir)
    held = ["probe.json"] if os.path.exists(os.path.join(out_dir, "probe.json")) else []
    refuse_used(out_dir, held, "a probe", resume=False, overwrite=overwrite, can_resume=False)


def print_table(report):
    rows = [("checkpoint", "wikitext", "forget", "drift", "early", "middle", "late", "rank zL", "rank zH", "cosdiv zL",
             "mmlu")]
    for label, e in report["checkpoints"].items():
        d = e.get("drift", {})
        rows.append((label, f"{e['wikitext_loss']:.4f}", f"{e.get('forgetting', 0.0):+.4f}",
                     *(f"{d[k]:.4f}" if d else "-" for k in ("mean", "early", "middle", "late")),
                     f"{e['collapse']['z_tL']['effective_rank']:.1f}", f"{e['collapse']['z_tH']['effective_rank']:.1f}",
                     f"{e['collapse']['z_tL']['cos_diversity']:.3f}", f"{e['mmlu']:.3f}" if "mmlu" in e else "-"))
    print_rows(rows)
    for name, text in report["texts"].items():
        print(f"\n{name} ({text['masked_positions']} masked positions; unigram {text['unigram_loss']:.4f}, "
              f"odd samples {text['unigram_loss_report_half']:.4f}):")
        rows = [("checkpoint", "loss", "forget", "KL(base||ft)", "top1", "top5", "T", "loss odd", "calibrated",
                 "retention", "ret. calib.")]
        for label, e in report["checkpoints"].items():
            m = e["texts"][name]
            rows.append((label, f"{m['loss']:.4f}", *(fmt(m.get(k), ".4f", "+") for k in ("forgetting", "kl_from_base")),
                         f"{m['top1']:.3f}", f"{m['top5']:.3f}", f"{m['temperature']:.2f}",
                         f"{m['loss_report_half']:.4f}", f"{m['calibrated_loss']:.4f}",
                         *(fmt(m.get(k), ".3f") for k in ("retention", "retention_calibrated"))))
        print_rows(rows)
    for name, r in report["drift_ratios"].items():
        print(f"drift ratio {name}: " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in r.items()))


def fmt(value, spec, sign=""):
    return "-" if value is None else format(value, sign + spec)


def print_rows(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def plot_drift(report, path):
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, e in report["checkpoints"].items():
        if "drift_per_layer" in e:
            ax.plot(range(len(e["drift_per_layer"])), e["drift_per_layer"], marker="o", ms=3, label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("1 - cos(base, fine-tuned)")
    ax.set_title("Per-layer drift from the base (WikiText)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_main("probe.py", main, sys.argv[1:], lambda: dist_timeout, INTERRUPTED)
