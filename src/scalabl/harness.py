"""A scalabl run as an lm-evaluation-harness model: ``--model scalabl`` (the ``lm-eval`` extra).

Registered under the name ``scalabl`` when this module is imported; ``scalabl-lm-eval`` is the
harness's own command line with it registered (lm-eval 0.4 discovers models only from its own
list, so a bare ``lm_eval --model scalabl`` cannot find a model of another package)::

    scalabl-lm-eval --model scalabl --model_args run=RUN_DIR,n_samples=10 --tasks TASKS

``model_args``: ``run`` (a run folder), ``n_samples`` (S; 0: the posterior mean, an ensemble's first
member; an ensemble averages all its members for any S > 0), ``seed`` (of the posterior samples),
``generation`` (``mean``: greedy under the posterior mean; ``majority``: one answer per posterior
sample, the most common returned), ``max_length`` (default: the model's context).

* ``loglikelihood``: the Bayesian model average of the continuation's probability, log-mean-exp over
  the S samples of its summed log-likelihood (in float64). Requests that share a context are scored
  in one pass over it (:class:`scalabl.scoring.Scorer`'s KV cache), and sample k of a request is
  seeded by its context's text, so a request's answer does not depend on its batch. ``is_greedy``:
  whether every continuation token is the posterior mean's argmax (what ``generate_until`` with
  ``generation=mean`` would produce).
* ``loglikelihood_rolling``: the harness's disjoint windows; sample k is the same weight sample for
  every window of a document (seeded by the document), so the model average is over whole
  documents: log-mean-exp over k of the sum over windows.
* ``generate_until``: Hugging Face ``generate`` with the harness's stop criteria and gen kwargs.

Tokenisation is the harness's (:class:`lm_eval.api.model.TemplateLM`: contexts and continuations
split as its Hugging Face model splits them), so with ``n_samples=0`` the answers equal ``--model
hf`` on the same weights (tested). Laplace and temperature runs are refused: their predictives act
on a question's choice distribution, not on a continuation's likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from scalabl.bayesian import bayesian_modules, sampling
from scalabl.choices import LengthNorm, MethodName, Scoring, Truncation
from scalabl.generation import majority
from scalabl.predict import bayesian_model_average
from scalabl.runs import load_run
from scalabl.scoring import Encoded, Scorer

GENERATION = ("mean", "majority")
REFUSED = (MethodName.LAPLACE, MethodName.TEMPERATURE)


@dataclass(frozen=True)
class ContextGroup:
    """Continuations scored after one context's tokens; ``question`` seeds its posterior samples
    (:func:`scalabl.predict.question_seed` reads ``context`` and ``question``)."""

    question: str
    prompt: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    context: str = ""


class HarnessScorer(Scorer):
    """Summed log-likelihood ``[B, C_max]`` of each group's continuations (token ids given), with
    ``greedy`` kept after each pass."""

    classifies = False
    track_greedy = True

    def __init__(self, tokenizer, max_length: int) -> None:
        super().__init__(tokenizer, Scoring.CONTINUATION, length_norm=LengthNorm.NONE, max_length=max_length)
        self.truncation = Truncation.LEFT

    def encode(self, group: ContextGroup) -> Encoded:  # type: ignore[override]
        longest = max(map(len, group.continuations))
        # the harness's model keeps the last max_length + 1 tokens of context + continuation
        budget = self.max_length + 1 - longest
        if budget < 1:
            raise ValueError(f"a continuation of {longest} tokens exceeds max_length {self.max_length}")
        prompt = list(group.prompt)[-budget:]
        return Encoded(prompt, [list(c) for c in group.continuations], len(group.continuations))


@register_model("scalabl")
class ScalaBLLM(TemplateLM):
    """A trained scalabl run (any end-to-end method) answering the harness's requests."""

    def __init__(
        self,
        run: str,
        n_samples: int = 10,
        seed: int = 0,
        generation: str = "mean",
        batch_size: int | str | None = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        device: str | None = None,
        **_: Any,  # the harness's arguments for other models (max_batch_size, ...)
    ) -> None:
        super().__init__()
        if generation not in GENERATION:
            raise ValueError(f"generation: {generation!r} is not one of {', '.join(GENERATION)}")
        n_samples, seed = int(n_samples), int(seed)
        if n_samples < 0:
            raise ValueError(f"n_samples: {n_samples} must be >= 0")
        config, blora = load_run(run)
        if config.method.method in REFUSED or config.method.temperature:
            raise ValueError(
                f"{run}: a {config.method.method.value} run's predictive acts on choice distributions, "
                "not on a continuation's likelihood; the harness takes mle, map, scalabl, blob, tfb, "
                "mcdropout and ensemble runs (without --temperature)"
            )
        self.blora, self.method, self.model = blora, blora.method, blora.model
        self.tokenizer = blora.tokenizer
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        self.model.to(self._device).eval()
        self.n_samples, self.seed, self.generation = n_samples, seed, generation
        self.k = 0 if n_samples == 0 else self.method.samples_for(n_samples)
        self.noise = bool(bayesian_modules(self.model))  # else a sample is an ensemble member
        self.batch_size = 8 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
        config_length = getattr(self.model.config, "max_position_embeddings", None)
        self._max_length = int(max_length or config_length or 2048)
        self.max_gen_toks = int(max_gen_toks)
        self.scorer = HarnessScorer(self.tokenizer, self._max_length)

    # ---- what TemplateLM needs ------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As the harness's Hugging Face model encodes: the tokenizer's own default for special tokens,
        none when the text already starts with the BOS token."""
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            options["add_special_tokens"] = False
        return self.tokenizer.encode(string, **options)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- scoring --------------------------------------------------------------------------------
    def _score(self, groups: Sequence[ContextGroup], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample summed log-likelihoods ``[max(K, 1), B, C_max]`` and the mean's ``greedy``."""
        with torch.no_grad():
            mean = self.scorer.class_logits(self.model, groups, sample=False)
            greedy = self.scorer.greedy
            if self.k == 0:
                return mean[None].cpu(), greedy.cpu()
            # noise not seeded by text (MC dropout's masks) is seeded by the batch's position
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + start)
            samples = []
            for k in range(self.k):
                with self.method.posterior_sample(self.model, k, groups, self.seed, generator):
                    samples.append(
                        self.scorer.class_logits(self.model, groups, sample=self.noise, noise_set=self.noise)
                    )
        return torch.stack(samples).cpu(), greedy.cpu()

    def _per_sample(
        self, items: list[tuple[str, list[int], list[int]]], progress: bool
    ) -> tuple[torch.Tensor, list[bool]]:
        """``items`` (seed text, context ids, continuation ids) -> per-sample log-likelihoods
        ``[max(K, 1), N]`` and greedy flags, one pass per distinct (seed text, context)."""
        keys: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, (text, ctx, _) in enumerate(items):
            keys.setdefault((text, tuple(ctx)), []).append(i)
        groups = [
            (ContextGroup(text, ctx, tuple(tuple(items[i][2]) for i in where)), where)
            for (text, ctx), where in keys.items()
        ]
        groups.sort(key=lambda g: -len(g[0].prompt))  # similar lengths batched: less padding
        loglik = torch.zeros((max(self.k, 1), len(items)), dtype=torch.float64)
        greedy = [False] * len(items)
        for start in tqdm(range(0, len(groups), self.batch_size), disable=not progress, desc="scalabl"):
            batch = groups[start : start + self.batch_size]
            scores, flags = self._score([g for g, _ in batch], start)
            for b, (_, where) in enumerate(batch):
                for c, i in enumerate(where):
                    loglik[:, i] = scores[:, b, c].double()
                    greedy[i] = bool(flags[b, c])
        return loglik, greedy

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        items = [(context or "", ctx, cont) for (context, _), ctx, cont in requests]
        loglik, greedy = self._per_sample(items, progress=not disable_tqdm)
        answers = [
            (float(v), g) for v, g in zip(bayesian_model_average(loglik).tolist(), greedy, strict=True)
        ]
        for ((context, continuation), _, _), answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("loglikelihood", (context, continuation), answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        items, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, windows):
                items.append((string, ctx, cont))  # every window of a document: its samples
                owner.append(r)
        loglik, _ = self._per_sample(items, progress=not disable_tqdm)
        per_doc = torch.zeros((loglik.shape[0], len(requests)), dtype=torch.float64)
        per_doc.index_add_(1, torch.tensor(owner, dtype=torch.long), loglik)
        answers = bayesian_model_average(per_doc).tolist()
        for req, answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, answer)
        return answers

    # ---- generation -----------------------------------------------------------------------------
    def _generate(self, contexts: list[str], kwargs: dict, until: list[str], max_gen_toks: int) -> list[str]:
        # batched as the harness's Hugging Face model batches: left-padded, the context cut from the left
        bos = has_bos_prefix(contexts[0], getattr(self.tokenizer, "bos_token", None))
        special = {"add_special_tokens": False} if bos else {}
        enc = self.tokenizer(contexts, return_tensors="pt", padding="longest", padding_side="left", **special)
        room = self.max_length - max_gen_toks
        if room < 1:
            raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room in max_length {self.max_length}")
        ids, mask = (enc[key][:, -room:].to(self.device) for key in ("input_ids", "attention_mask"))
        kwargs = dict(kwargs)
        if kwargs.get("temperature", 0.0) == 0.0 and not kwargs.get("do_sample"):
            kwargs.pop("temperature", None)
            kwargs["do_sample"] = False
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_length=ids.shape[1] + max_gen_toks,
                stopping_criteria=stop_sequences_criteria(self.tokenizer, until, ids.shape[1], ids.shape[0]),
                pad_token_id=self.scorer.pad_id,
                use_cache=True,
                **kwargs,
            )
        texts = [self.tok_decode(row[ids.shape[1] :].tolist()) for row in out]
        return [postprocess_generated_text(t, until, None) for t in texts]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        order = Collator(
            [req.args for req in requests],
            sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
            group_by="gen_kwargs",
            group_fn=lambda r: r[1],
        )
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        answers = []
        for start, chunk in enumerate(order.get_batched(n=self.batch_size)):
            contexts = [c for c, _ in chunk]
            kwargs = normalize_gen_kwargs(chunk[0][1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if self.generation == "mean" or self.k == 0:
                with sampling(self.model, False):
                    texts = self._generate(contexts, kwargs, until, max_gen_toks)
            else:
                groups = [ContextGroup(c, (), ()) for c in contexts]
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + start)
                per_sample = []
                for k in range(self.k):
                    with self.method.posterior_sample(self.model, k, groups, self.seed, generator):
                        per_sample.append(self._generate(contexts, kwargs, until, max_gen_toks))
                texts = [majority([s[i] for s in per_sample]) for i in range(len(contexts))]
            for (context, gen_kwargs), text in zip(chunk, texts, strict=True):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            answers.extend(texts)
            if not disable_tqdm:
                tqdm.write(f"generate_until: {len(answers)}/{len(requests)}")
        return order.get_original(answers)
