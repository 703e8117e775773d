"""Scoring (DESIGN §3): the shared-prompt KV-cache path against a naive one-sequence-per-choice computation."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from scalabl.bayesian import bayesian_modules, clear_noise, draw_noise, lora_layers, sampling
from scalabl.choices import DEFAULT_LENGTH_NORM
from scalabl.config import RunConfig
from scalabl.examples import Example
from scalabl.methods import MethodConfig
from scalabl.methods.scalabl import ScalaBL
from scalabl.scoring import Scorer, continuation_prompt, letter_prompt

ATOL = 1e-4


def wrap_scalabl(model: nn.Module | None = None, seed: int = 0, targets=("q_proj", "v_proj")) -> nn.Module:
    model = ScalaBL(MethodConfig(rank=4, sigma_init=0.5, target_modules=targets)).wrap(
        model or make_tiny_llama()
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            w = layer.lora_B["default"].weight
            w.copy_(0.3 * torch.randn(w.shape, generator=g))
    model.eval()
    return model


@pytest.fixture
def model() -> nn.Module:
    return wrap_scalabl()


EXAMPLES = [
    Example("e0", "Which is warm?", ("sun", "snowy ice"), 0),
    Example(
        "e1",
        "A much longer question about plants and what they need in order to grow well?",
        ("water", "light and air", "rocks"),
        1,
    ),
    Example("e2", "Pick one.", ("a", "bb", "a longer answer", "dddd", "e e"), 4, context="Some context."),
]


def merged_letter_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with ' A'..' E' merged into single tokens (vocab 262)."""
    byte_vocab = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(byte_vocab)}
    vocab["<eos>"] = len(vocab)
    merges = []
    for letter in "ABCDE":
        vocab["\u0120" + letter] = len(vocab)
        merges.append(("\u0120", letter))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


# ---- naive references ------------------------------------------------------------------------------
def naive_choice_score(model: nn.Module, prompt: list[int], choice: list[int]) -> torch.Tensor:
    """Summed log-prob of ``choice`` after ``prompt``, one unpadded sequence through the model."""
    ids = torch.tensor([prompt + choice])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(choice) - 1)
    return logp[positions, torch.tensor(choice)].sum()


def naive_continuation(
    model, tokenizer, examples, *, noise_rows=None, length_norm=DEFAULT_LENGTH_NORM.value
) -> torch.Tensor:
    c_max = max(len(e.choices) for e in examples)
    out = torch.full((len(examples), c_max), float("-inf"))
    for i, e in enumerate(examples):
        if noise_rows is not None:
            for m, xi in zip(bayesian_modules(model), noise_rows, strict=True):
                m.set_noise_rows(xi[i : i + 1])
        prompt = tokenizer.encode(continuation_prompt(e))
        for c, text in enumerate(e.choices):
            choice = tokenizer.encode(" " + text, add_special_tokens=False)
            score = naive_choice_score(model, prompt, choice)
            per = {"none": 1, "tokens": len(choice), "chars": len(" " + text)}[length_norm]
            out[i, c] = score / per
    return out


# ---- continuation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reuse_prompt", [True, False])
def test_continuation_matches_naive_posterior_mean(model, tokenizer, reuse_prompt):
    scorer = Scorer(tokenizer, reuse_prompt=reuse_prompt)
    with torch.no_grad():
        got = scorer.class_logits(model, EXAMPLES, sample=False)
        with sampling(model, False):
            expected = naive_continuation(model, tokenizer, EXAMPLES)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert torch.isneginf(got[0, 2:]).all() and torch.isneginf(got[1, 3:]).all()
    assert torch.isfinite(got[2]).all()


@pytest.mark.parametrize("reuse_prompt", [True, False])
def test_continuation_matches_naive_with_the_same_noise(model, tokenizer, reuse_prompt):
    seed = 3
    draw_noise(model, len(EXAMPLES), torch.Generator().manual_seed(seed))
    noise_rows = [m.noise_rows().clone() for m in bayesian_modules(model)]
    assert all(xi.shape[0] == len(EXAMPLES) for xi in noise_rows)
    scorer = Scorer(tokenizer, reuse_prompt=reuse_prompt)
    with torch.no_grad():
        got = scorer.class_logits(model, EXAMPLES, sample=True, generator=torch.Generator().manual_seed(seed))
        assert all(m.noise_rows() is None for m in bayesian_modules(model)), "scoring must clear its noise"
        with sampling(model, True):
            expected = naive_continuation(model, tokenizer, EXAMPLES, noise_rows=noise_rows)
        mean = scorer.class_logits(model, EXAMPLES, sample=False)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    finite = torch.isfinite(mean)
    assert not torch.allclose(got[finite], mean[finite], atol=1e-3), "the sample must differ from the mean"


def test_keep_noise_leaves_the_sample_for_the_caller(model, tokenizer):
    scorer = Scorer(tokenizer)
    with torch.no_grad():
        scorer.class_logits(
            model, EXAMPLES, sample=True, generator=torch.Generator().manual_seed(0), keep_noise=True
        )
    kept = [m.noise_rows() for m in bayesian_modules(model)]
    assert all(xi is not None for xi in kept)
    clear_noise(model)
    assert all(m.noise_rows() is None for m in bayesian_modules(model))


@pytest.mark.parametrize("reuse_prompt", [True, False])
def test_a_sampled_head_adapter_matches_naive_with_the_same_noise(tokenizer, reuse_prompt):
    """The head runs only at answer positions: each still gets its sequence's head sample."""
    model = wrap_scalabl(seed=2, targets=("v_proj", "lm_head"))
    draw_noise(model, len(EXAMPLES), torch.Generator().manual_seed(9))
    noise_rows = [m.noise_rows().clone() for m in bayesian_modules(model)]
    clear_noise(model)
    with torch.no_grad():
        got = Scorer(tokenizer, reuse_prompt=reuse_prompt).class_logits(
            model, EXAMPLES, generator=torch.Generator().manual_seed(9)
        )
        with sampling(model, True):
            expected = naive_continuation(model, tokenizer, EXAMPLES, noise_rows=noise_rows)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_reused_prompt_equals_full_rows_under_the_same_sample(tokenizer):
    """The prompt-cache fast path and the cache-free path: same logits for every example's sample."""
    model = wrap_scalabl(seed=1)
    with torch.no_grad():
        fast = Scorer(tokenizer).class_logits(model, EXAMPLES, generator=torch.Generator().manual_seed(5))
        full = Scorer(tokenizer, reuse_prompt=False).class_logits(
            model, EXAMPLES, generator=torch.Generator().manual_seed(5)
        )
    torch.testing.assert_close(fast, full, atol=ATOL, rtol=0)


# a choice of 2 characters in 3 byte tokens ("é" is two bytes): tokens and characters differ
ACCENTED = Example(id="accent", question="Which?", choices=("é", "ab", "cde"), label=0)


@pytest.mark.parametrize("reuse_prompt", [True, False])
@pytest.mark.parametrize("length_norm", ["tokens", "chars"])
def test_continuation_length_norm(model, tokenizer, reuse_prompt, length_norm):
    examples = [*EXAMPLES, ACCENTED]
    with torch.no_grad():
        raw = Scorer(tokenizer, length_norm="none", reuse_prompt=reuse_prompt).class_logits(
            model, examples, sample=False
        )
        normed = Scorer(tokenizer, length_norm=length_norm, reuse_prompt=reuse_prompt).class_logits(
            model, examples, sample=False
        )
        with sampling(model, False):
            expected = naive_continuation(model, tokenizer, examples, length_norm=length_norm)
    torch.testing.assert_close(normed, expected, atol=ATOL, rtol=0)
    for i, e in enumerate(examples):
        for c, text in enumerate(e.choices):
            n_tokens = len(tokenizer.encode(" " + text, add_special_tokens=False))
            per = n_tokens if length_norm == "tokens" else len(" " + text)
            torch.testing.assert_close(normed[i, c], raw[i, c] / per)
    assert len(tokenizer.encode(" é", add_special_tokens=False)) == 3 and len(" é") == 2


def test_length_norm_reads_the_earlier_boolean():
    """Configs and saved adapters written when the option was a boolean: True meant the token mean."""
    assert Scorer(make_byte_tokenizer(), length_norm=True).length_norm == "tokens"
    assert Scorer(make_byte_tokenizer(), length_norm=False).length_norm == "none"
    assert RunConfig.from_dict({"length_norm": True}).length_norm == "tokens"
    with pytest.raises(ValueError, match=r"length_norm: 'mean' not in \('none', 'tokens', 'chars'\)"):
        RunConfig(length_norm="mean")


def test_single_token_choices_skip_the_choice_pass():
    tok = merged_letter_tokenizer()
    model = wrap_scalabl(make_tiny_llama(vocab_size=len(tok)))
    examples = [
        Example("s0", "Which letter comes first?", ("A", "B", "C"), 0),
        Example("s1", "Pick the last letter of this short list please", ("D", "E"), 1),
    ]
    assert all(len(tok.encode(" " + c, add_special_tokens=False)) == 1 for e in examples for c in e.choices)
    calls = []
    embed = model.get_base_model().model.embed_tokens
    handle = embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            got = Scorer(tok).class_logits(model, examples, sample=False)
    finally:
        handle.remove()
    assert len(calls) == 1, "single-token choices need only the prompt pass"
    with torch.no_grad(), sampling(model, False):
        expected = naive_continuation(model, tok, examples)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert torch.isneginf(got[1, 2])


def test_gradients_flow_through_continuation_scoring(tokenizer):
    model = ScalaBL(MethodConfig(rank=4)).wrap(make_tiny_llama())  # B = 0, as after init
    model.train()
    logits = Scorer(tokenizer).class_logits(model, EXAMPLES, sample=True, generator=torch.Generator())
    labels = torch.tensor([e.label for e in EXAMPLES])
    torch.nn.functional.cross_entropy(logits, labels).backward()
    for name, layer in lora_layers(model):
        grad = layer.lora_B["default"].weight.grad
        assert grad is not None and torch.count_nonzero(grad) > 0, name


def test_left_truncation(model, tokenizer, caplog):
    long = Example("long", "word " * 40 + "end?", ("yes", "no way"), 0)
    max_length = 24
    scorer = Scorer(tokenizer, length_norm="none", max_length=max_length)  # compared with summed scores
    with caplog.at_level(logging.WARNING, logger="scalabl.scoring"):
        enc = scorer.encode(long)
    assert any(
        "truncated from the left" in r.getMessage() and "long" in r.getMessage() for r in caplog.records
    )
    full = tokenizer.encode(continuation_prompt(long))
    longest = max(len(c) for c in enc.choices)
    assert enc.prompt == full[-(max_length - longest) :]
    assert len(enc.prompt) + longest <= max_length
    with torch.no_grad():
        got = scorer.class_logits(model, [long, EXAMPLES[0]], sample=False)
        with sampling(model, False):
            expected = torch.stack(
                [
                    naive_choice_score(model, enc.prompt, c)
                    for c in (tokenizer.encode(" " + t, add_special_tokens=False) for t in long.choices)
                ]
            )
    assert torch.isfinite(got[0]).all()
    torch.testing.assert_close(got[0], expected, atol=ATOL, rtol=0)


def test_max_length_shorter_than_a_choice_is_rejected(tokenizer):
    example = Example("tiny", "A question of some length?", ("a rather long answer", "no"), 0)
    longest = len(tokenizer.encode(" a rather long answer", add_special_tokens=False))
    for max_length in (5, longest):
        with pytest.raises(ValueError, match="no room for the prompt"):
            Scorer(tokenizer, max_length=max_length).encode(example)


# ---- letter mode -----------------------------------------------------------------------------------
def test_letter_prompt_lists_choices():
    text = letter_prompt(EXAMPLES[2])
    assert text.startswith("Some context.\nQuestion: Pick one.\n")
    assert "A. a\nB. bb\nC. a longer answer\nD. dddd\nE. e e\n" in text
    assert text.endswith("\nAnswer:")


@pytest.mark.parametrize("merged", [False, True])
def test_letter_logits_match_next_token_logits(tokenizer, merged):
    tok = merged_letter_tokenizer() if merged else tokenizer
    model = wrap_scalabl(make_tiny_llama(vocab_size=len(tok)))
    scorer = Scorer(tok, mode="letter")
    letter_ids = scorer.letter_token_ids(5)
    expected_ids = [tok.convert_tokens_to_ids(("\u0120" if merged else "") + c) for c in "ABCDE"]
    assert letter_ids == expected_ids
    with torch.no_grad():
        got = scorer.class_logits(model, EXAMPLES, sample=False)
        with sampling(model, False):
            rows = []
            for e in EXAMPLES:
                ids = torch.tensor([tok.encode(letter_prompt(e))])
                next_logits = model(input_ids=ids).logits[0, -1].float()
                row = torch.full((5,), float("-inf"))
                row[: len(e.choices)] = next_logits[letter_ids[: len(e.choices)]]
                rows.append(row)
            naive = torch.stack(rows)
    assert got.shape == (3, 5)
    assert torch.equal(torch.isneginf(got), torch.isneginf(naive))
    # Same class distribution; the scorer's values may differ from raw logits by a per-row constant.
    torch.testing.assert_close(torch.softmax(got, -1), torch.softmax(naive, -1), atol=1e-5, rtol=1e-4)
    finite = torch.isfinite(naive)
    shift = (got - naive).masked_fill(~finite, 0.0)
    for i in range(3):
        d = shift[i][finite[i]]
        torch.testing.assert_close(d, d[:1].expand_as(d), atol=ATOL, rtol=0)


def test_scorer_rejects_unknown_mode(tokenizer):
    with pytest.raises(ValueError, match="scoring"):
        Scorer(tokenizer, mode="generate")


def test_truncation_can_be_refused(tokenizer):
    long = Example("long", "word " * 40 + "end?", ("yes", "no way"), 0)
    with pytest.raises(ValueError, match=r"long: prompt of \d+ tokens does not fit the model context of 24"):
        Scorer(tokenizer, max_length=24, truncation="error").encode(long)
    assert Scorer(tokenizer, max_length=200, truncation="error").encode(EXAMPLES[0])  # prompts that fit pass
    with pytest.raises(ValueError, match="truncation"):
        Scorer(tokenizer, truncation="right")
