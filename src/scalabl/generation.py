"""Answers to open questions from a (Bayesian) adapter: the posterior-mean answer, one answer per
posterior sample, and each answer's log-likelihood under every sample.

For a batch of questions (:func:`generate_answers`):

1. the **answer**: greedy decoding at the posterior mean (no noise, no dropout). An ensemble has no
   mean model: its answer is the one most of its members give (ties: the lowest member's);
2. **S answers**, one per posterior sample k = 1..S (:meth:`scalabl.methods.base.Method.posterior_sample`
   holds sample k for the whole answer), greedy or sampled. A deterministic model has no posterior:
   with sampled decoding it gives S draws of its own distribution, with greedy decoding none;
3. **likelihoods**: every distinct answer of the question (the answer first) scored under every
   model of the average, ``loglik[k, u] = log p_k(u | x)``, under the same sample that wrote
   answer k (MC dropout draws its masks anew in each forward, so its sample is not one fixed model);
   and the answer's log-likelihood under the posterior mean (the single-model score).

Decoding runs transformers' ``generate`` (KV cache, stop string ``"\\n"``, left-padded batches).
Where a sample is one fixed model across forwards (no dropout, noise seeded per question, members,
IVON's and SWAG's networks), the scoring under sample k starts from the KV cache of the prompts
that the decoding under sample k ran (cropped to the prompts) instead of running them again:
the same numbers up to float rounding, at a fraction of the scoring's cost
(benchmarks/results/generation_reuse.md). The uncertainty scores
computed from these are :mod:`scalabl.uncertainty`'s.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

from scalabl.answer_scoring import STOP, AnswerScorer, PromptPass, ScoredAnswers
from scalabl.bayesian import bayesian_modules, sampling
from scalabl.choices import Decoding
from scalabl.config.generate import GenerateConfig
from scalabl.qa import QAExample, normalize_answer


@dataclass
class Generated:
    """One question's answers and their likelihoods (see the module docstring)."""

    example: QAExample
    answer: str
    samples: list[str]
    texts: list[str]  # the distinct answers, ``answer`` first
    loglik: np.ndarray  # [K, U]: log p_k(texts[u] | x) under each model k of the average (K >= 1)
    answer_loglik_single: float  # log p(answer | x) under the posterior mean
    answer_tokens: int  # tokens of the scored answer (with its stop)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.example.id,
            "question": self.example.question,
            "answer": self.answer,
            "samples": self.samples,
            "texts": self.texts,
            "loglik": self.loglik.tolist(),
            "answer_loglik_single": self.answer_loglik_single,
            "answer_tokens": self.answer_tokens,
        }


@dataclass
class Timing:
    """Seconds spent on the posterior-mean answers and on what the S samples add."""

    answer: float = 0.0
    samples: float = 0.0
    scoring: float = 0.0

    def to_dict(self) -> dict[str, float]:
        total = self.answer + self.samples + self.scoring
        return {
            "answer_seconds": self.answer,
            "samples_seconds": self.samples,
            "scoring_seconds": self.scoring,
            "cost_vs_one_answer": total / self.answer if self.answer else float("nan"),
        }


def majority(answers: Sequence[str]) -> str:
    """The answer given most often (compared normalised; ties: the earliest), as first written."""
    counts = collections.Counter(normalize_answer(a) for a in answers)
    best = max(counts.values())
    return next(a for a in answers if counts[normalize_answer(a)] == best)


def _cut(text: str) -> str:
    return text.split(STOP, 1)[0].strip()


@torch.no_grad()
def _decode(
    model,
    tokenizer,
    scorer: AnswerScorer,
    batch: Sequence[QAExample],
    config: GenerateConfig,
    seed: int,
    keep_prompts: bool = False,
) -> tuple[list[str], PromptPass | None]:
    """One answer per question under whatever sample the model holds now; with ``keep_prompts``,
    also the prompts' pass (their KV cache cropped to them), for scoring under the same sample."""
    prompts = [scorer.fit_prompt(scorer.prompt_ids(q), config.max_new_tokens, q.id) for q in batch]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), scorer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    device = next(model.parameters()).device
    sampled = config.decoding == Decoding.SAMPLE
    options = (
        {"do_sample": True, "temperature": config.temperature, "top_k": 0}
        if sampled
        else {"do_sample": False}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # sampled decoding draws its tokens from the global RNG
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=config.max_new_tokens,
            stop_strings=[STOP],
            tokenizer=tokenizer,
            pad_token_id=scorer.pad_id,
            return_dict_in_generate=True,
            output_logits=keep_prompts,
            **options,
        )
    new = out.sequences[:, width:].cpu()
    answers = [_cut(tokenizer.decode(row, skip_special_tokens=True)) for row in new]
    cache = out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)
    # plain full-attention layers only: a sliding window may have dropped prompt states for good
    if not keep_prompts or not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return answers, None
    extra = cache.get_seq_length() - width
    if extra:
        cache.crop(-extra)  # the prompts only: the answers' tokens are dropped
    last = torch.log_softmax(out.logits[0].float(), dim=-1)  # the first answer token's distribution
    return answers, PromptPass(prompts, last, mask.to(device), cache)


def reuses_prompts(blora) -> bool:
    """Whether a sample is one fixed model across forwards, so its decoding's prompt cache serves its
    scoring: no dropout, and noise (if any) set per question rather than drawn per forward."""
    modules = bayesian_modules(blora.model)
    return blora.method.dropout == 0 and all(m.stackable for m in modules)


def _score(
    model, scorer: AnswerScorer, rows: list[ScoredAnswers], sampled: bool, state: PromptPass | None
) -> torch.Tensor:
    """Summed log-likelihood ``[B, U_max]`` of each question's answers (one pass over its prompt, or
    none with the decoding's ``state``); when ``sampled``, under the noise row the caller set for
    each question."""
    with scorer.prompts_run(state):
        if sampled:
            return scorer.class_logits(model, rows, sample=True, noise_set=True).double().cpu()
        return scorer.class_logits(model, rows, sample=False).double().cpu()


def generate_answers(
    blora,
    examples: Sequence[QAExample],
    config: GenerateConfig,
    timing: Timing | None = None,
    *,
    progress: bool = False,
    offset: int = 0,
    reuse_prompts: bool = True,
) -> list[Generated]:
    """The answers of ``examples`` (see the module docstring), in their order (batched by prompt
    length); ``timing`` (if given) adds up the seconds of the greedy answers, of the S sampled ones
    and of the scoring. ``offset``: where ``examples`` begin in a longer list answered in parts
    (sampled decoding and MC dropout's masks are seeded by the batch's position). ``reuse_prompts``
    False runs every scoring's prompts again (the module docstring says when they are reused)."""
    model, method = blora.model, blora.method
    scorer = blora.answer_scorer()
    timing = timing if timing is not None else Timing()
    k_models = method.samples_for(config.n_samples)  # 0: a deterministic model, no posterior
    n_answers = k_models or (config.n_samples if config.decoding == Decoding.SAMPLE else 0)
    noise = bool(bayesian_modules(model))  # a posterior sample is module noise (else: an ensemble member)
    keep = reuse_prompts and reuses_prompts(blora)
    was_training = model.training
    model.eval()
    # batches of similar prompt lengths: a batch is padded to its longest prompt, and prompts with
    # contexts vary several-fold (per-question noise keeps every answer independent of its batch)
    order = sorted(range(len(examples)), key=lambda i: len(scorer.prompt_ids(examples[i])))
    results: dict[int, Generated] = {}
    batches = range(0, len(examples), config.batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress, dynamic_ncols=True):
        where = order[start : start + config.batch_size]
        batch = [examples[i] for i in where]
        # noise not seeded per question (MC dropout's masks) is seeded by the batch's position
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + offset + start)

        def held(
            k: int, batch: list[QAExample] = batch, generator: torch.Generator = generator
        ) -> AbstractContextManager[None]:
            if k_models == 0:
                return nullcontext()
            return method.posterior_sample(model, k, batch, config.seed, generator)

        t0 = time.perf_counter()
        with sampling(model, False):  # the posterior mean (an ensemble: its first member)
            greedy, mean_state = _decode(
                model, blora.tokenizer, scorer, batch, replace(config, decoding=Decoding.GREEDY), 0, keep
            )
        t1 = time.perf_counter()
        samples, states = [], []
        for k in range(n_answers):
            with held(k):
                answers_k, state_k = _decode(
                    model,
                    blora.tokenizer,
                    scorer,
                    batch,
                    config,
                    config.seed + 7919 * k + offset + start,
                    keep and k < k_models,  # a sampled decoding of a deterministic model scores nothing
                )
            samples.append(answers_k)
            states.append(state_k)
        t2 = time.perf_counter()
        per_question = [[s[i] for s in samples] for i in range(len(batch))]
        answers = greedy if method.has_mean else [majority(a) for a in per_question]
        texts = [list(dict.fromkeys([answers[i], *per_question[i]])) for i in range(len(batch))]
        rows = [ScoredAnswers(q, tuple(ts)) for q, ts in zip(batch, texts, strict=True)]
        with torch.no_grad():
            single = _score(model, scorer, rows, False, mean_state)
            scored = []
            for k in range(k_models):
                with held(k):
                    scored.append(_score(model, scorer, rows, noise, states[k] if k < len(states) else None))
        loglik = torch.stack(scored or [single])  # [K, B, U_max]; a deterministic model is its own average
        tokens = scorer.answer_tokens(rows)
        t3 = time.perf_counter()
        timing.answer += t1 - t0
        timing.samples += t2 - t1
        timing.scoring += t3 - t2
        for i, q in enumerate(batch):
            results[where[i]] = Generated(
                example=q,
                answer=answers[i],
                samples=per_question[i],
                texts=texts[i],
                loglik=loglik[:, i, : len(texts[i])].numpy(),
                answer_loglik_single=float(single[i, 0]),
                answer_tokens=int(tokens[i]),
            )
    model.train(was_training)
    return [results[i] for i in range(len(examples))]
