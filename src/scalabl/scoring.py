"""Turn a multiple-choice example into C class logits with a causal LM (DESIGN §3).

Two scoring modes:

* ``continuation``: the logit of choice c is the summed log-likelihood of its text after the
  prompt, divided by its number of tokens (``length_norm="tokens"``) or of characters (``"chars"``,
  the continuation ``" " + choice`` as lm-eval-harness's ``acc_norm`` counts it), or not
  (``"none"``). The prompt runs **once** per example; its key/value cache is re-indexed to one row
  per choice and only the choice tokens run after it.
* ``letter``: the prompt lists the choices as ``A. ...``; the logits are the next-token logits
  restricted to the letter tokens.

Posterior samples: one noise row is drawn per example and re-indexed together with the cache, so
the prompt and all of its choices see the same model sample.

``reuse_prompt=False`` scores continuations without a cache: one forward over ``prompt + choice``
per (example, choice) row, each with its example's noise row; it costs more (the prompt runs once
per choice), needs no KV cache (which gradient checkpointing forbids) and gives the same logits.
"""

from __future__ import annotations

import inspect
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from scalabl.architectures import output_logits
from scalabl.bayesian import base_model, bayesian_modules, clear_noise, draw_noise, sampling, select_noise
from scalabl.choices import DEFAULT_LENGTH_NORM, LengthNorm, Scoring, Truncation
from scalabl.examples import Example
from scalabl.subset import (
    Branch,
    Subset,
    branch_into_copies,
    draw_stacked_noise,
    sample_only,
    select_cache_rows,
)

LETTERS = string.ascii_uppercase
log = logging.getLogger(__name__)


def continuation_prompt(example: Example) -> str:
    head = f"{example.context}\n" if example.context else ""
    return f"{head}Question: {example.question}\nAnswer:"


def letter_prompt(example: Example) -> str:
    head = f"{example.context}\n" if example.context else ""
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(example.choices)]
    return f"{head}Question: {example.question}\n" + "\n".join(lines) + "\nAnswer:"


def _cache_kwarg(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or the older name."""
    forward = type(base_model(model)).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _output_cache(out) -> object:
    return out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]
    choices: list[list[int]]  # continuation: token ids of each choice; letter: empty
    n_choices: int
    chars: tuple[int, ...] = ()  # continuation: characters of each scored continuation " " + choice


class Scorer:
    """Computes class logits ``[B, C_max]`` (``-inf`` where an example has fewer choices)."""

    classifies = True  # a row's logits are over its choices; its label says which is right
    track_greedy = False  # keep .greedy [B, C_max]: all of a choice's tokens argmax (the harness's is_greedy)
    greedy: torch.Tensor | None = None

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mode: str = Scoring.CONTINUATION,
        *,
        length_norm: str | bool = DEFAULT_LENGTH_NORM,
        max_length: int | None = None,
        truncation: str = Truncation.LEFT,
        reuse_prompt: bool = True,
    ) -> None:
        self.mode = Scoring.parse(mode, "scoring")
        self.truncation = Truncation.parse(truncation, "truncation")
        self.reuse_prompt = reuse_prompt
        self.tokenizer = tokenizer
        self.length_norm = LengthNorm.parse(length_norm, "length_norm")
        self.max_length = max_length or getattr(tokenizer, "model_max_length", None) or 2048
        if self.max_length > 1_000_000:  # tokenizers without a limit report a huge sentinel
            self.max_length = 2048
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache: dict[Example, Encoded] = {}  # keyed by the whole example: ids may repeat
        self._letter_ids: list[int] | None = None

    # ---- tokenisation -------------------------------------------------------------------------
    def letter_token_ids(self, n: int) -> list[int]:
        """Token ids of the answer letters: ' A' if it is one token, else 'A'."""
        if self._letter_ids is None or len(self._letter_ids) < n:
            ids = []
            for letter in LETTERS[: max(n, 5)]:
                spaced = self.tokenizer.encode(" " + letter, add_special_tokens=False)
                bare = self.tokenizer.encode(letter, add_special_tokens=False)
                if len(spaced) == 1:
                    ids.append(spaced[0])
                elif len(bare) == 1:
                    ids.append(bare[0])
                else:
                    raise ValueError(f"letter scoring: answer letter {letter!r} is not a single token")
            self._letter_ids = ids
        return self._letter_ids[:n]

    def encode(self, example: Example) -> Encoded:
        if example in self._cache:
            return self._cache[example]
        tok = self.tokenizer
        if self.mode == Scoring.LETTER:
            prompt = tok.encode(letter_prompt(example), add_special_tokens=True)
            choices: list[list[int]] = []
            longest = 1
        else:
            prompt = tok.encode(continuation_prompt(example), add_special_tokens=True)
            choices = [tok.encode(" " + c, add_special_tokens=False) for c in example.choices]
            if any(len(c) == 0 for c in choices):
                raise ValueError(f"example {example.id}: a choice encodes to no tokens")
            longest = max(len(c) for c in choices)
        budget = self.max_length - longest
        if budget < 1:
            raise ValueError(
                f"example {example.id}: its longest choice ({longest} tokens) leaves no room for the prompt "
                f"in the model context of {self.max_length} tokens"
            )
        if len(prompt) > budget and self.truncation == Truncation.ERROR:
            raise ValueError(
                f"example {example.id}: prompt of {len(prompt)} tokens does not fit the model context of "
                f"{self.max_length} tokens with its longest choice ({longest}); "
                "shorten it or allow truncation='left' (drops the prompt's start)"
            )
        if len(prompt) > budget:
            log.warning(
                "example %s: prompt of %d tokens truncated from the left to %d (model context %d)",
                example.id,
                len(prompt),
                budget,
                self.max_length,
            )
            prompt = prompt[-budget:]
        chars = tuple(len(" " + c) for c in example.choices) if self.mode == Scoring.CONTINUATION else ()
        enc = Encoded(prompt, choices, len(example.choices), chars)
        self._cache[example] = enc
        return enc

    def loss(self, logits: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
        """The training loss of a batch: the mean cross-entropy of the labelled choices."""
        labels = torch.tensor([e.label for e in examples], device=logits.device)
        return torch.nn.functional.cross_entropy(logits, labels)

    # ---- scoring ------------------------------------------------------------------------------
    def class_logits(
        self,
        model: nn.Module,
        examples: Sequence[Example],
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        keep_noise: bool = False,
        subset: Subset | None = None,
        copies: int = 1,
        rows_of: tuple[int, Sequence[int]] | None = None,
        noise_set: bool = False,
    ) -> torch.Tensor:
        """Class logits for a batch, float32 ``[B, C_max]``, differentiable.

        ``sample=True`` draws one posterior sample per example (a no-op for deterministic
        methods); ``sample=False`` uses the posterior mean. ``keep_noise=True`` leaves the drawn
        noise on the modules (the caller clears it, with :func:`scalabl.bayesian.clear_noise`):
        a backward pass that recomputes the forward (gradient checkpointing) must see the same sample.

        ``subset`` (see :mod:`scalabl.subset`) with ``copies=S``: S samples of only the subset's
        modules, the network before the subset run once; returns ``[S * B, C_max]``, sample-major.

        ``rows_of=(n, rows)``: the examples are rows ``rows`` of a batch of n (data parallelism);
        they get the noise that drawing for the whole batch gives those rows.

        ``noise_set=True`` (with ``sample=True``): the caller has set one noise row per example on
        every module (:func:`scalabl.predict.set_question_noise`); nothing is drawn.
        """
        encoded = [self.encode(e) for e in examples]
        device = next(model.parameters()).device
        if subset is not None:
            branch = Branch(subset, copies)
            with sample_only(model, subset), branch_into_copies(model, branch):
                draw_stacked_noise(model, subset, len(encoded), copies, generator)
                try:
                    return self._logits(model, encoded, device, branch)
                finally:
                    clear_noise(model)
        with sampling(model, sample):
            if sample and noise_set:
                pass
            elif sample and rows_of is not None and rows_of[0] != len(encoded):
                draw_noise(model, rows_of[0], generator)
                select_noise(model, torch.tensor(list(rows_of[1]), device=device))
            elif sample:
                draw_noise(model, len(encoded), generator)
            try:
                return self._logits(model, encoded, device, None)
            finally:
                if not keep_noise:
                    clear_noise(model)

    def _logits(self, model: nn.Module, encoded: list[Encoded], device: torch.device, branch: Branch | None):
        if self.mode == Scoring.LETTER:
            return self._letter_logits(model, encoded, device, branch)
        if not self.reuse_prompt:
            return self._full_continuation_logits(model, encoded, device, branch)
        return self._continuation_logits(model, encoded, device, branch)

    def _forward(
        self,
        model: nn.Module,
        branch: Branch | None,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, object]:
        """The decoder over ``input_ids``, then the output head only where a score is read:
        ``positions`` (bool ``[rows, T]``, row-major order) or, if None, each row's last position.
        Returns float32 log-probs ``[n, V]`` and the KV cache. The head is the largest matrix of a
        small model: padded and prompt positions never reach it."""
        base = base_model(model)
        if branch is not None:
            branch.rows = input_ids.shape[0]  # the rows entering; a layer branch repeats them
        out = base.get_decoder()(input_ids=input_ids, **kwargs)
        hidden = out.last_hidden_state  # [R, T, D]: R = rows, or S x rows after a layer branch
        head = base.get_output_embeddings()
        if positions is None:
            hidden = hidden[:, -1]
        else:
            mask = positions.repeat(hidden.shape[0] // positions.shape[0], 1)
            hidden = hidden[mask]
            # A sampled head adapter draws per sequence: give each kept position its row's noise.
            row_of = mask.nonzero()[:, 0]
            if branch is not None and branch.subset.start_layer is None:  # copies made at the head
                row_of = branch.expand(row_of, mask.shape[0])
            for m in bayesian_modules(head):
                m.select_noise(row_of)
        if branch is not None:
            branch.rows = hidden.shape[0]  # a head branch repeats what enters the head
        logits = output_logits(base, head, hidden)
        return torch.log_softmax(logits.float(), dim=-1), _output_cache(out)

    def _prompt_pass(
        self,
        model: nn.Module,
        encoded: list[Encoded],
        device: torch.device,
        use_cache: bool,
        branch: Branch | None,
    ):
        """Left-padded prompts through the model; returns last-position log-probs, mask and cache."""
        width = max(len(e.prompt) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, width - len(e.prompt) :] = torch.tensor(e.prompt)
            mask[i, width - len(e.prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        last, cache = self._forward(
            model, branch, ids, None, attention_mask=mask, position_ids=position_ids, use_cache=use_cache
        )
        return last, mask, cache

    def _letter_logits(
        self, model: nn.Module, encoded: list[Encoded], device: torch.device, branch: Branch | None
    ) -> torch.Tensor:
        copies = branch.copies if branch is not None else 1
        encoded = encoded * copies  # under a branch: one block of rows per sample
        c_max = max(e.n_choices for e in encoded)
        # Next-token log-probs at the letters; a softmax over them gives the class probabilities.
        last, _, _ = self._prompt_pass(model, encoded[: len(encoded) // copies], device, False, branch)
        letter_ids = torch.tensor(self.letter_token_ids(c_max), device=device)
        logits = last[:, letter_ids]
        n = torch.tensor([e.n_choices for e in encoded], device=device)
        missing = torch.arange(c_max, device=device)[None, :] >= n[:, None]
        return logits.masked_fill(missing, float("-inf"))

    def _continuation_logits(
        self, model: nn.Module, encoded: list[Encoded], device: torch.device, branch: Branch | None
    ) -> torch.Tensor:
        longest = max(len(c) for e in encoded for c in e.choices)
        last, prompt_mask, cache = self._prompt_pass(model, encoded, device, longest > 1, branch)
        if branch is not None:  # S blocks of examples, sample-major, as the branched rows are
            encoded = encoded * branch.copies

        # One row per (example, choice); row r belongs to example row_ex[r].
        row_ex = [i for i, e in enumerate(encoded) for _ in e.choices]
        row_choice = [c for e in encoded for c in e.choices]
        index = torch.tensor(row_ex, device=device)
        n_rows = len(row_choice)
        targets = torch.full((n_rows, longest), self.pad_id, dtype=torch.long)
        target_mask = torch.zeros((n_rows, longest), dtype=torch.bool)
        for r, c in enumerate(row_choice):
            targets[r, : len(c)] = torch.tensor(c)
            target_mask[r, : len(c)] = True
        targets, target_mask = targets.to(device), target_mask.to(device)

        token_lp = [last[index].gather(-1, targets[:, :1])]  # the prompt's last position: the first token
        hits = [last[index].argmax(-1, keepdim=True) == targets[:, :1]] if self.track_greedy else None
        if longest > 1:
            select_cache_rows(cache, index, branch)
            select_noise(model, index)
            # Under a branch, the first block of rows enters; the branch point repeats it.
            first = index if branch is None else branch.block(index)
            inputs = targets[: len(first), :-1]
            in_mask = target_mask[: len(first), :-1].long()
            mask = torch.cat([prompt_mask[first], in_mask], dim=1)
            start = prompt_mask.sum(-1)[first]
            position_ids = start[:, None] + torch.arange(longest - 1, device=device)[None, :]
            scored = target_mask[:, 1:]  # the real answer tokens after the first
            lp, _ = self._forward(
                model,
                branch,
                inputs,
                scored[: len(first)],
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                **{_cache_kwarg(model): cache},
            )
            rest = torch.zeros(scored.shape, dtype=lp.dtype, device=device)
            later = targets[:, 1:][scored]
            token_lp.append(rest.masked_scatter(scored, lp.gather(-1, later[:, None]).squeeze(-1)))
            if hits is not None:
                hits.append(torch.ones_like(scored).masked_scatter(scored, lp.argmax(-1) == later))
        if hits is not None:
            greedy = (torch.cat(hits, dim=1) | ~target_mask).all(-1)
            self.greedy = self._per_choice(encoded, index, greedy, False)
        return self._choice_logits(encoded, index, torch.cat(token_lp, dim=1), target_mask)

    def _choice_logits(
        self, encoded: list[Encoded], index: torch.Tensor, token_lp: torch.Tensor, target_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-row token log-probs ``[rows, T]`` -> class logits ``[B, C_max]`` (row r is example index[r])."""
        scores = token_lp.masked_fill(~target_mask, 0.0).sum(-1)
        if self.length_norm == LengthNorm.TOKENS:
            scores = scores / target_mask.sum(-1)
        elif self.length_norm == LengthNorm.CHARS:
            chars = torch.tensor([n for e in encoded for n in e.chars], device=scores.device)
            scores = scores / chars.to(scores.dtype)
        return self._per_choice(encoded, index, scores, float("-inf"))

    @staticmethod
    def _per_choice(encoded: list[Encoded], index: torch.Tensor, values: torch.Tensor, fill) -> torch.Tensor:
        """Per-row ``values [rows]`` -> ``[B, C_max]`` (row r is example index[r]; ``fill`` elsewhere)."""
        c_max = max(e.n_choices for e in encoded)
        out = torch.full((len(encoded), c_max), fill, dtype=values.dtype, device=values.device)
        choice_pos = torch.tensor([j for e in encoded for j in range(e.n_choices)], device=values.device)
        return out.index_put((index, choice_pos), values)

    def _full_continuation_logits(
        self, model: nn.Module, encoded: list[Encoded], device: torch.device, branch: Branch | None
    ) -> torch.Tensor:
        """Continuation scores with no cache: one left-padded ``prompt + choice[:-1]`` row per choice."""
        rows = [(i, e.prompt, c) for i, e in enumerate(encoded) for c in e.choices]
        longest = max(len(c) for _, _, c in rows)
        width = max(len(p) + len(c) - 1 for _, p, c in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        # Targets right-aligned: the last len(c) positions predict the choice's tokens.
        targets = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        target_mask = torch.zeros((len(rows), longest), dtype=torch.bool)
        for r, (_, prompt, choice) in enumerate(rows):
            seq = prompt + choice[:-1]
            ids[r, width - len(seq) :] = torch.tensor(seq)
            mask[r, width - len(seq) :] = 1
            targets[r, longest - len(choice) :] = torch.tensor(choice)
            target_mask[r, longest - len(choice) :] = True
        ids, mask, targets, target_mask = (
            ids.to(device),
            mask.to(device),
            targets.to(device),
            target_mask.to(device),
        )
        index = torch.tensor([i for i, _, _ in rows], device=device)
        if branch is not None:  # S blocks of rows, sample-major, as the branched rows are
            index = branch.expand(index, len(encoded))
            encoded = encoded * branch.copies
            targets, target_mask = targets.repeat(branch.copies, 1), target_mask.repeat(branch.copies, 1)
        select_noise(model, index)  # every choice row sees its example's sample
        # the positions that predict the answer tokens: each row's last len(choice) columns
        positions = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        positions[:, width - longest :] = target_mask[: len(rows)]
        lp, _ = self._forward(
            model,
            branch,
            ids,
            positions,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        )
        token_lp = torch.zeros(target_mask.shape, dtype=lp.dtype, device=device)
        token_lp = token_lp.masked_scatter(
            target_mask, lp.gather(-1, targets[target_mask][:, None]).squeeze(-1)
        )
        return self._choice_logits(encoded, index, token_lp, target_mask)
