"""Sampling a subset of modules: the semantics, and the fast path equal to the plain loop."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, predicted, toy_examples

from scalabl.bayesian import bayesian_modules, lora_layers
from scalabl.methods import MethodConfig
from scalabl.methods.scalabl import ScalaBL
from scalabl.scoring import Scorer
from scalabl.subset import select_subset

N_LAYERS = 4


def wrapped(targets=("q_proj", "v_proj"), method: str = "scalabl", seed: int = 0):
    """A tiny 4-layer Llama with a ScalaBL adapter whose B is nonzero and sigma large."""
    base = make_tiny_llama(layers=N_LAYERS)
    model = ScalaBL(MethodConfig(method=method, rank=4, sigma_init=0.5, target_modules=targets)).wrap(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            w = layer.lora_B["default"].weight
            w.copy_(0.3 * torch.randn(w.shape, generator=g))
    return model.eval()


EXAMPLES = toy_examples(6, varied=True)
SCORERS = {
    "continuation": lambda tok: Scorer(tok),
    "continuation-full": lambda tok: Scorer(tok, reuse_prompt=False),
    "letter": lambda tok: Scorer(tok, "letter"),
}


def test_subset_selects_the_last_layers_and_the_head():
    model = wrapped(targets=("q_proj", "v_proj", "lm_head"))
    names = {id(m): n for n, m in model.named_modules()}
    last2 = select_subset(model, "last:2")
    assert last2.start_layer == N_LAYERS - 2
    got = sorted(
        re.sub(r"^.*?(layers\.|lm_head)", r"\1", names[id(m)].split(".lora_A")[0]) for m in last2.sampled
    )
    assert got == [
        "layers.2.self_attn.q_proj",
        "layers.2.self_attn.v_proj",
        "layers.3.self_attn.q_proj",
        "layers.3.self_attn.v_proj",
        "lm_head",
    ]
    head = select_subset(model, "lm_head")
    assert head.start_layer is None and len(head.sampled) == 1
    with pytest.raises(ValueError, match="no Bayesian module there"):
        select_subset(wrapped(), "lm_head")  # lm_head not adapted


@pytest.mark.parametrize("scoring", list(SCORERS))
@pytest.mark.parametrize(
    ("spec", "targets"),
    [
        ("last:1", ("q_proj", "v_proj")),
        ("last:2", ("q_proj", "v_proj", "lm_head")),
        ("lm_head", ("v_proj", "lm_head")),
    ],
)
def test_fast_path_equals_the_plain_loop_with_the_same_noise(scoring, spec, targets):
    model, tok = wrapped(targets), make_byte_tokenizer()
    scorer = SCORERS[scoring](tok)
    kw = dict(n_samples=3, batch_size=4, seed=7, return_samples=True, sample_modules=spec)
    _, plain = predicted(model, scorer, EXAMPLES, batch_samples=False, **kw)
    _, fast = predicted(model, scorer, EXAMPLES, batch_samples=True, **kw)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    assert not torch.allclose(plain[0], plain[1]), "samples must differ"
    assert all(m.noise_rows() is None for m in bayesian_modules(model)), "noise must be cleared"


@pytest.mark.parametrize("scoring", list(SCORERS))
def test_unsampled_modules_sit_at_their_mean(scoring):
    """With sigma = 0 outside the last layer, sampling everything equals sampling the last layer."""
    model, tok = wrapped(), make_byte_tokenizer()
    last = {id(m) for m in select_subset(model, "last:1").sampled}
    with torch.no_grad():
        for m in bayesian_modules(model):
            if id(m) not in last:
                m.log_sigma.fill_(-30.0)
    scorer = SCORERS[scoring](tok)
    kw = dict(n_samples=3, batch_size=4, seed=2, return_samples=True)
    _, everything = predicted(model, scorer, EXAMPLES, **kw)
    _, subset = predicted(model, scorer, EXAMPLES, sample_modules="last:1", batch_samples=True, **kw)
    torch.testing.assert_close(subset, everything, atol=1e-5, rtol=0)


def test_all_layers_as_a_subset_is_the_method_as_trained():
    model, tok = wrapped(), make_byte_tokenizer()
    kw = dict(n_samples=2, batch_size=3, seed=4, return_samples=True)
    _, plain = predicted(model, Scorer(tok), EXAMPLES, **kw)
    _, subset = predicted(model, Scorer(tok), EXAMPLES, sample_modules=f"last:{N_LAYERS}", **kw)
    torch.testing.assert_close(subset, plain, atol=1e-5, rtol=0)


def test_a_subset_of_correlated_noise_is_refused():
    from scalabl.methods.blob import BLoB

    model = BLoB(MethodConfig(method="blob", rank=4)).wrap(make_tiny_llama(layers=N_LAYERS))
    with pytest.raises(ValueError, match="independent per-sequence noise"):
        predicted(model, Scorer(make_byte_tokenizer()), EXAMPLES, n_samples=2, sample_modules="last:1")


def _predict_four_letter_questions(model, tok, spec: str) -> None:
    """The fast path (S = 5 copies of a batch of 4) on letter scoring, for the row-count hooks."""
    predicted(
        model,
        Scorer(tok, "letter"),
        EXAMPLES[:4],
        n_samples=5,
        batch_size=4,
        batch_samples=True,
        sample_modules=spec,
    )


def test_the_fast_path_runs_the_unsampled_layers_once():
    model, tok = wrapped(), make_byte_tokenizer()
    layers = select_subset(model, "last:1")
    stack = [m for n, m in model.named_modules() if n.endswith("layers")][0]
    seen: dict[int, list[int]] = {0: [], N_LAYERS - 1: []}
    hooks = [
        stack[i].register_forward_hook(lambda mod, args, out, i=i: seen[i].append(args[0].shape[0]))
        for i in seen
    ]
    try:
        _predict_four_letter_questions(model, tok, "last:1")
    finally:
        for h in hooks:
            h.remove()
    assert layers.start_layer == N_LAYERS - 1
    assert seen[0] == [4] and seen[N_LAYERS - 1] == [20]  # one pass of B rows, then S x B rows


def test_head_only_sampling_runs_the_frozen_head_once():
    model, tok = wrapped(targets=("v_proj", "lm_head")), make_byte_tokenizer()
    head = model.get_base_model().lm_head
    rows: list[tuple[int, int]] = []
    hook = head.base_layer.register_forward_hook(
        lambda m, args, out: rows.append((args[0].shape[0], out.shape[0]))
    )
    try:
        _predict_four_letter_questions(model, tok, "lm_head")
    finally:
        hook.remove()
    assert rows == [(4, 4)]  # W x once for B rows (the S copies are made after it)


@pytest.mark.parametrize("scoring", list(SCORERS))
def test_batched_samples_equal_the_plain_loop_with_the_same_noise(scoring):
    """batch_samples=True (S copies from the first layer) and S separate passes: same probabilities."""
    model, tok = wrapped(targets=("q_proj", "v_proj", "lm_head")), make_byte_tokenizer()
    scorer = SCORERS[scoring](tok)
    kw = dict(n_samples=3, batch_size=4, seed=5, return_samples=True)
    _, plain = predicted(model, scorer, EXAMPLES, batch_samples=False, **kw)
    _, batched = predicted(model, scorer, EXAMPLES, batch_samples=True, **kw)
    torch.testing.assert_close(batched, plain, atol=1e-5, rtol=0)
