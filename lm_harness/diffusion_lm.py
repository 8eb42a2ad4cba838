"""
EleutherAI's lm-evaluation-harness model for any checkpoint evaluate.py loads (LLaDA and Dream layouts,
train.py run folders, hub ids), registered as `dllm_jepa`. Run it through `python -m lm_harness` (this
folder's __main__: lm-eval's own command line, with this model registered):

  python -m lm_harness --model dllm_jepa --model_args checkpoint=out,gen_length=256 --tasks gsm8k
  torchrun --nproc_per_node 8 -m lm_harness --model dllm_jepa --model_args checkpoint=out --tasks mmlu

  generate_until         sampler.generate with every option evaluate.py has (steps, gen_length, block_length,
                         temperature, cfg_scale, remasking, the fast-decoding options off by default), prompts
                         batched by --batch_size, generation stopped at EOS (and end-of-turn under a chat
                         template), then cut at the task's first stop string. gen_length is the model_args'
                         (as LLaDA's eval_llada.py), not the task's max_gen_toks: a diffusion canvas is fixed.
  loglikelihood          the masked-diffusion bound (LLaDA's Monte-Carlo estimate, eval_llada.py, below),
                         the greedy check only with check_greedy=true (it costs a generation per request)
  loglikelihood_rolling  refused: a whole document's bound needs a masking distribution over the document,
                         which no published diffusion evaluation defines; probe.py measures the forgetting
                         loss on text
  ranks                  under torchrun each rank scores lm-eval's shard of the requests and lm-eval gathers
                         them through all_gather, gather_object and barrier below

The estimate of log p(continuation | context) (LLaDA's eval_llada.py, the paper's eq. for conditional
likelihood): -E_l E_S [ (L / l) sum_{i in S} CE_i ], l uniform on 1..L, S a uniformly random set of l of
the continuation's L tokens masked (the context never is), CE_i the cross-entropy at position i. mc_num
draws in rounds of mc_batch rows: a round draws k uniform on 1..L and gives its rows the counts
round(k + j L / mc_batch) wrapped into 1..L (stratified, as LLaDA's), each row its own random positions.
Every draw comes from a generator seeded by (seed, the request), so a request's estimate is the same in any
batch, on any rank, in any order. With cfg_scale > 0 the unconditional copy masks the whole context and
logits = un + (cfg_scale + 1) (cond - un), as LLaDA's.
"""

import sys
import zlib

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import data
import model as modellib
from harness.errors import ConfigError
from harness.run_folder import run_config
from harness.runtime import init_distributed, resolve_dtype
from sampler import Decoding, check_schedule, cut_at_stop, generate


def masked_bound(model, prefix, target, mc_num, mc_batch, generator, cfg_scale=0.0):
    """LLaDA's Monte-Carlo estimate of log p(target | prefix) (see the top of this file), a float."""
    L, P, dev = len(target), len(prefix), next(model.parameters()).device
    if L == 0:
        return 0.0
    mask_id = model.cfg.mask_token_id
    seq = torch.tensor(prefix + target, device=dev).repeat(mc_batch, 1)
    total = 0.0
    for _ in range(mc_num // mc_batch):
        k = int(torch.randint(1, L + 1, (), generator=generator))
        counts = torch.round(torch.linspace(float(k), k + (mc_batch - 1) * L / mc_batch, mc_batch)).long()
        counts = (counts - 1) % L + 1
        order = torch.stack([torch.randperm(L, generator=generator) for _ in range(mc_batch)])
        masked = torch.cat([torch.zeros(mc_batch, P, dtype=torch.bool), order < counts[:, None]], 1).to(dev)
        noisy = torch.where(masked, mask_id, seq)
        logits = model(noisy, logits_at=masked).logits
        if cfg_scale > 0:
            unconditional = noisy.clone()
            unconditional[:, :P] = mask_id
            un = model(unconditional, logits_at=masked).logits
            logits = un + (cfg_scale + 1) * (logits - un)
        ce = F.cross_entropy(logits.float(), seq[masked], reduction="none")
        weight = (L / counts.to(dev).float())[masked.nonzero()[:, 0]]
        total += float((ce * weight).sum()) / mc_batch
    return -total / (mc_num // mc_batch)


def request_seed(seed, request):
    """A request's own seed: (seed, task, document, index, arguments), so its draws do not depend on the
    batch, the rank or the order it is scored in."""
    key = f"{request.task_name}/{request.doc_id}/{request.idx}/{request.args!r}"
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63


def int_arg(value, name):
    """lm-eval passes --batch_size as an int or a string ('auto' here means 1)."""
    if value in (None, "auto"):
        return 1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def lm_eval_device(device):
    """lm-eval's --device (its default 'cuda:0', or 'cuda:N') as this project's setting: 'cuda' (each rank its
    own GPU, as train.py) where CUDA is there, else the CPU; 'auto' and 'cpu' as they are."""
    if str(device).startswith("cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device or "auto"


@register_model("dllm_jepa")
class DiffusionLM(LM):
    def __init__(self, checkpoint, steps=0, gen_length=256, block_length=0, temperature=0.0, cfg_scale=0.0,
                 remasking="low_confidence", threshold=0.0, cache="none", logits_eos_inf=False,
                 confidence_eos_eot_inf=False, mc_num=128, mc_batch=32, check_greedy=False, seed=1234,
                 batch_size=1, dtype="auto", device="auto", trust_remote_code=False, **lm_eval_options):
        """model_args as evaluate.py's flags: steps and block_length 0 mean evaluate.py's defaults
        (min(128, gen_length)); mc_num / mc_batch LLaDA's (128 draws in rounds of 32)."""
        super().__init__()
        cache = cache or "none"  # lm-eval reads 'none' as None
        block_length = block_length or min(128, gen_length)
        steps = steps or min(128, gen_length)
        check_schedule(gen_length, block_length, steps)
        Decoding(temperature, cfg_scale, threshold, remasking, logits_eos_inf, False, None, cache).check()
        if mc_num < 1 or mc_batch < 1 or mc_num % mc_batch:
            raise ConfigError(f"mc_num={mc_num} must be a positive multiple of mc_batch={mc_batch}")
        self._world_size, self._rank, self._device = init_distributed(lm_eval_device(device))
        ckpt = modellib.resolve_checkpoint_dir(checkpoint)
        self.model = modellib.load_for_inference(ckpt, dtype=resolve_dtype(dtype, self._device), device=self._device)
        self.tokenizer = modellib.load_tokenizer(ckpt, self.model.cfg, trust_remote_code)
        self.name = checkpoint
        self.schedule = dict(steps=steps, gen_length=gen_length, block_length=block_length)
        self.decoding = Decoding(temperature, cfg_scale, threshold, remasking, logits_eos_inf, confidence_eos_eot_inf,
                                 None, cache)  # the end-of-turn id: once the prompts' template is known
        self.mc_num, self.mc_batch, self.check_greedy, self.seed = mc_num, mc_batch, check_greedy, seed
        self.batch_size = int_arg(batch_size, "batch_size")
        self.chat_rendered = False  # set once lm-eval asks for the chat template (--apply_chat_template)
        # an Instruct model, or a run trained on chat prompts, expects the template: lm-eval renders it only
        # when asked, so a run without it is told once (evaluate.py's --chat auto decides by the same rule)
        self.wants_chat = data.uses_chat("auto", checkpoint, run_config(ckpt))
        self.told = False

    # ---- text to ids

    def encode(self, text):
        """A context as ids: evaluate.py's plain prompt (BOS first, the text as text); under a chat template
        lm-eval has rendered it, special tokens and all, so it is read as rendered."""
        if self.wants_chat and not self.chat_rendered and not self.told:
            print(f"warning: {self.name} expects chat prompts (an Instruct model, or trained on them); pass "
                  f"lm-eval's --apply_chat_template to score it as it was trained", file=sys.stderr)
            self.told = True
        if self.chat_rendered:
            return self.tokenizer.encode(text, add_special_tokens=False)
        return data.encode_plain(self.tokenizer, text)

    def encode_pair(self, context, continuation):
        """(context ids, continuation ids) as lm-eval's TemplateLM and LLaDA's eval_llada.py split them: the
        context's trailing spaces move to the continuation, and the continuation is what the whole text's
        ids hold after the context's."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, head = self.encode(context + continuation), self.encode(context)
        return head, whole[len(head):]

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        self.chat_rendered = True
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self):
        return self.name.replace("/", "__")

    # ---- the three request types

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for request in requests:
            prefix, target = self.encode_pair(*request.args)
            g = torch.Generator().manual_seed(request_seed(self.seed, request))
            with torch.no_grad():
                logprob = masked_bound(self.model, prefix, target, self.mc_num, self.mc_batch, g,
                                       self.decoding.cfg_scale)
            out.append((logprob, self.is_greedy(prefix, target) if self.check_greedy else False))
        return out

    def is_greedy(self, prefix, target):
        """LLaDA's suffix_greedy_prediction: the target filled one token a step, most confident first,
        greedily, equals the target. The sampler with one token a step and one block is that rule."""
        n = len(target)
        if n == 0:
            return True
        got = generate(self.model, [prefix], steps=n, gen_length=n, block_length=n,
                       decoding=Decoding(cfg_scale=self.decoding.cfg_scale))
        return got[0].tolist() == target

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError(
            "dllm_jepa: loglikelihood_rolling (perplexity tasks such as wikitext) is not defined for a masked-"
            "diffusion model here: a whole document's bound needs a masking distribution over it that no "
            "published diffusion evaluation defines. probe.py measures the forgetting loss on text.")

    def generate_until(self, requests, disable_tqdm=False):
        eot = data.end_of_turn_id(self.tokenizer) if self.chat_rendered or self.decoding.confidence_eos_eot_inf \
            else None
        stops = {self.model.cfg.eos_token_id} | ({eot} if self.chat_rendered else set())
        prompts = [self.encode(r.args[0]) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (len(prompts[i]), i))  # like lengths together
        sampled = self.decoding.temperature > 0 or self.decoding.remasking == "random"
        out = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            generators = [torch.Generator(device=self._device).manual_seed(request_seed(self.seed, requests[i]))
                          for i in batch] if sampled else None
            with torch.no_grad():
                ids = generate(self.model, [prompts[i] for i in batch], generator=generators, stop_ids=stops,
                               decoding=self.decoding._replace(eot_id=eot), **self.schedule)
            for i, row in zip(batch, ids.tolist()):
                text = self.tokenizer.decode(cut_at_stop(row, stops), skip_special_tokens=True)
                for stop in requests[i].args[1].get("until") or []:
                    text = text.split(stop)[0]
                out[i] = text
        return out

    # ---- ranks (lm-eval's hooks; one process: the defaults)

    @property
    def device(self):
        return self._device

    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist
        parts = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, parts, dst=dst)
        return parts

    def barrier(self):
        if self._world_size > 1:
            import torch.distributed as dist
            dist.barrier()
