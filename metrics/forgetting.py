"""
The forgetting probe's measures (probe.py): what a loss alone cannot tell apart, a model that kept what the
base knew or one whose logits only grew sharper or flatter. At the masked positions of a text, identical for
every model: KL(base || fine-tuned), top-1 / top-5, the loss at one temperature fitted on the even samples and
reported on the odd ones, and retention = (unigram - fine-tuned) / (unigram - base) against a unigram model of
a named text. Here the pure parts: the temperature grid, the unigram model, the measures from a pass's raw
values, and the forgetting texts read from their files; probe.forgetting_pass runs the models.
"""

import os

import torch

from harness.errors import ConfigError, InputError, parse_json, read_text

# the temperatures the calibrated loss is fitted over: 2^(j/16), 0.25 to 8 (steps of 4.4%; 1 and 2 exactly)
TEMPERATURES = torch.tensor([2.0 ** (j / 16) for j in range(-32, 49)], dtype=torch.float64)
UNIGRAM_PRIOR = 0.5  # pseudo-count per vocabulary entry (Krichevsky-Trofimov): no token gets probability 0


def unigram_logprobs(token_lists, vocab_size):
    """log p(token) of the unigram model of these token lists, (V,) float64: counts plus UNIGRAM_PRIOR."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in token_lists:
        counts += torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=vocab_size)[:vocab_size].double()
    counts += UNIGRAM_PRIOR
    return counts.log() - counts.sum().log()


def forgetting_measures(raw):
    """One checkpoint's measures on one text from forgetting_pass's output (all ranks joined): the loss as
    the forgetting probe has always reported it (per-sample means, then over samples), the token-level loss,
    top-1 / top-5 accuracy, and the calibrated loss: the temperature with the lowest loss on the even samples'
    positions, and the loss at it on the odd samples' (with the loss at temperature 1 there, its comparison)."""
    fit, report = raw["half"] == 0, raw["half"] == 1
    best = int((raw["ce_at_t"][0] / max(int(fit.sum()), 1)).argmin())
    out = {"loss": raw["loss"].mean().item(), "token_loss": raw["ce"].mean().item(),
           "top1": raw["top1"].float().mean().item(), "top5": raw["top5"].float().mean().item(),
           "temperature": TEMPERATURES[best].item(), "loss_report_half": raw["ce"][report].mean().item(),
           "calibrated_loss": (raw["ce_at_t"][1, best] / max(int(report.sum()), 1)).item()}
    if "kl" in raw:
        out["kl_from_base"] = raw["kl"].mean().item()
    return out


def retention(unigram, base_loss, ft_loss):
    """(unigram - fine-tuned) / (unigram - base): 1 where the fine-tuned model kept all of what the base knows
    beyond token frequencies, 0 where it kept none; None where the base does not beat the unigram."""
    return (unigram - ft_loss) / (unigram - base_loss) if unigram - base_loss > 0 else None


def parse_forgetting_data(spec):
    """--forgetting_data as [(name, path)]: 'name=path' or a bare path, named by its file name."""
    texts = []
    for part in (p for p in spec.split(",") if p):
        name, _, path = part.rpartition("=")
        name = name or os.path.splitext(os.path.basename(path))[0]
        if name == "wikitext" or name in [n for n, _ in texts]:
            raise ConfigError(f"--forgetting_data: the name {name!r} is used twice (wikitext is always probed)")
        texts.append((name, path))
    return texts


def text_documents(path):
    """A .jsonl file's rows as documents: each row's "text", else its string fields joined by a blank line in
    the row's order (GSM8K: question, then answer, as the replication corpus writes them)."""
    docs = []
    for i, line in enumerate(read_text(path, "--forgetting_data file").splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json(line, path, i)
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            text = "\n\n".join(v for v in (row.values() if isinstance(row, dict) else ()) if isinstance(v, str))
        if not text:
            raise InputError(f"{path}:{i}: a --forgetting_data row needs a \"text\" field or string fields")
        docs.append(text)
    return docs
