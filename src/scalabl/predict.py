"""Prediction: S posterior samples of the class log-probabilities, and their Bayesian model average.

:func:`predict_samples` runs the model S times (or once, S = 0: the posterior mean, no noise, one
deterministic pass at plain-LoRA cost) and returns each sample's log-probabilities;
:func:`bayesian_model_average` averages them, once, in float64 log space:
``log p(y | x) = logsumexp_k log_softmax(z_k)_y - log S`` over samples ``k = 1..S``.

With ``PredictConfig.per_question`` the noise of question q's k-th sample is drawn from a generator
seeded by (seed, q's text, k) (:func:`question_seed`), so a question gets the same prediction in any
batch: what ``scalabl predict`` and the server need to agree.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from scalabl.bayesian import bayesian_modules, draw_noise
from scalabl.config import PredictConfig
from scalabl.examples import Example
from scalabl.scoring import Scorer
from scalabl.subset import Subset, select_subset


def bayesian_model_average(sample_log_probs: torch.Tensor) -> torch.Tensor:
    """Average S predictive distributions given as log-probs ``[S, N, C]``; returns ``[N, C]`` float64."""
    lp = sample_log_probs.double()
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


def question_seed(seed: int, example: Example, sample: int) -> int:
    """The noise seed of ``example``'s ``sample``-th posterior sample: a hash of the seed, the
    question's text (context, question, choices; an open question has none) and the sample index."""
    choices = list(getattr(example, "choices", ()))
    text = json.dumps([seed, sample, example.context, example.question, choices])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def set_question_noise(
    model: nn.Module, examples: Sequence[Example], seed: int, samples: Iterable[int]
) -> None:
    """One noise row per (sample, question) on every module, sample-major (row ``k * B + i``), each
    drawn as a one-sequence batch from its :func:`question_seed` (stackable modules only)."""
    modules = bayesian_modules(model)
    rows: dict[int, list[torch.Tensor]] = {id(m): [] for m in modules}
    for k in samples:
        for example in examples:
            draw_noise(model, 1, torch.Generator().manual_seed(question_seed(seed, example, k)))
            for m in modules:
                rows[id(m)].append(m.noise_rows())
    for m in modules:
        m.set_noise_rows(torch.cat(rows[id(m)]))


def _per_question_logits(
    model: nn.Module, scorer: Scorer, batch: Sequence[Example], config: PredictConfig
) -> torch.Tensor:
    """``[S, B, C]`` class logits with each question's noise seeded by its text (see the module docs)."""
    s = config.n_samples
    if config.sample_modules != "all":
        raise ValueError("per_question predictions sample every module: sample_modules must be 'all'")
    if all(m.stackable for m in bayesian_modules(model)):
        if config.batch_samples:
            set_question_noise(model, batch, config.seed, range(s))
            return scorer.class_logits(model, list(batch) * s, sample=True, noise_set=True).view(
                s, len(batch), -1
            )
        out = []
        for k in range(s):
            set_question_noise(model, batch, config.seed, [k])
            out.append(scorer.class_logits(model, batch, sample=True, noise_set=True))
        return torch.stack(out)
    # Noise that is not one row per sequence (flipout, MC dropout's masks, shared draws): each
    # question and sample in a forward of its own, the global RNG (dropout) seeded for it too.
    per_question = []
    for example in batch:
        samples = []
        for k in range(s):
            q_seed = question_seed(config.seed, example, k)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(q_seed)
                g = torch.Generator().manual_seed(q_seed)
                samples.append(scorer.class_logits(model, [example], sample=True, generator=g)[0])
        per_question.append(torch.stack(samples))
    c_max = max(t.shape[-1] for t in per_question)
    padded = [torch.nn.functional.pad(t, (0, c_max - t.shape[-1]), value=float("-inf")) for t in per_question]
    return torch.stack(padded, dim=1)


def _copies_are_samples(model: nn.Module) -> bool:
    """Whether S copies of a batch in one draw are S independent posterior samples (see
    :attr:`scalabl.bayesian.BayesianModule.copies_in_one_draw`)."""
    return all(m.copies_in_one_draw for m in bayesian_modules(model))


def _fast_path(model: nn.Module, config: PredictConfig) -> Subset | None:
    """The subset of modules the forward may branch at (see :mod:`scalabl.subset`), or None."""
    if config.n_samples == 0:
        return None
    if config.sample_modules != "all":
        subset = select_subset(model, config.sample_modules)
        if not subset.stackable:
            raise ValueError(
                f"sample_modules={config.sample_modules!r} needs modules with independent per-sequence "
                "noise (scalabl with noise='sequence'); this model's sampled modules draw otherwise: use 'all'"
            )
        return subset
    if config.batch_samples:
        # All modules, S copies from the first decoder layer on, the noise drawn as the plain loop
        # draws it (same probabilities); correlated or shared noise keeps the copies path below.
        everything = select_subset(model, "all")
        return everything if everything.stackable else None
    return None


@torch.no_grad()
def predict_samples(
    model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
) -> torch.Tensor:
    """Per-sample predictive log-probabilities ``[max(S, 1), N, C_max]`` (float64; ``-inf`` for
    absent choices).

    ``config.batch_samples`` runs the S samples of a batch as one forward of S x B sequences (each
    copy gets its own per-sequence noise); otherwise S forwards of B sequences. Where the copies of
    one draw would not be independent samples (``noise="shared"``, one draw per forward; flipout's
    rows, which share one Gaussian draw) samples always run one forward each.

    ``config.sample_modules`` (``"all"``, ``"lm_head"``, ``"last:K"``; see :mod:`scalabl.subset`)
    samples only some modules, the rest at their posterior mean. Then ``batch_samples`` runs the
    network before the first sampled module once and branches into S copies there; the plain loop
    gives the same probabilities for the same seed.
    """
    s = config.n_samples
    was_training = model.training
    model.eval()
    subset = _fast_path(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    c_max = max(len(e.choices) for e in examples)
    chunks: list[torch.Tensor] = []
    batches = range(0, len(examples), config.batch_size)
    for start in tqdm(batches, desc=f"predict S={s}", disable=not config.progress, dynamic_ncols=True):
        batch = examples[start : start + config.batch_size]
        if s == 0:
            logits = scorer.class_logits(model, batch, sample=False)[None]
        elif config.per_question:
            logits = _per_question_logits(model, scorer, batch, config)
        elif subset is not None and config.batch_samples:
            # one pass up to the subset, S copies from there on
            logits = scorer.class_logits(model, batch, subset=subset, copies=s, generator=generator)
            logits = logits.view(s, len(batch), -1)
        elif subset is not None:
            logits = torch.stack(
                [scorer.class_logits(model, batch, subset=subset, generator=generator) for _ in range(s)]
            )
        elif config.batch_samples and _copies_are_samples(model):
            # S copies of the batch in one forward (MC dropout): each copy draws its own sample.
            # Not for flipout (blob, tfb), whose rows of one draw share a Gaussian, nor shared noise.
            logits = scorer.class_logits(model, list(batch) * s, sample=True, generator=generator)
            logits = logits.view(s, len(batch), -1)
        else:
            logits = torch.stack(
                [scorer.class_logits(model, batch, sample=True, generator=generator) for _ in range(s)]
            )
        lp = torch.log_softmax(logits.double(), dim=-1)  # [S, B, C]
        pad = torch.full((lp.shape[0], lp.shape[1], c_max - lp.shape[2]), float("-inf"), dtype=lp.dtype)
        chunks.append(torch.cat([lp.cpu(), pad], dim=-1))
    model.train(was_training)
    return torch.cat(chunks, dim=1)
