"""The architecture matrix: every method on a tiny random model of every architecture users bring
(Llama, Qwen2/3, Gemma 2/3, Mistral, Phi-3, OLMo 2) trains, predicts distributions, saves, reloads,
exports to stock peft, and adds exactly the parameters its formula says; plus the default targets,
the refusal of fused projections, and the output head's soft-capping."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from conftest import make_byte_tokenizer, predicted, toy_examples
from peft import PeftModel

from scalabl.api import BayesianLoRA
from scalabl.architectures import linear_names, output_logits, resolve_targets
from scalabl.config import MethodConfig, PredictConfig
from scalabl.export import export_peft
from scalabl.methods import METHODS
from scalabl.plan import make_plan
from scalabl.scoring import Scorer
from scalabl.testing import FUSED, TINY_ARCHITECTURES, make_tiny_model, tiny_config

RANK = 4
K = 2
TRAIN = toy_examples(8, seed=0)
VALIDATION = toy_examples(4, seed=1)
TEST = toy_examples(4, seed=2, varied=True)


def targets(arch: str) -> tuple[str, ...]:
    """The papers' targets: the attention's query and value projections (fused: qkv_proj) and lm_head."""
    return (*FUSED.get(arch, ("q_proj", "v_proj")), "lm_head")


def shapes(arch: str) -> list[tuple[int, int]]:
    """(in, out) of every adapted layer, from the config's numbers alone (not from the modules)."""
    c = tiny_config(arch)
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    out = {
        "q_proj": c.num_attention_heads * d,
        "v_proj": c.num_key_value_heads * d,
        "qkv_proj": (c.num_attention_heads + 2 * c.num_key_value_heads) * d,
    }
    per_layer = [(c.hidden_size, out[t]) for t in targets(arch) if t != "lm_head"]
    return per_layer * c.num_hidden_layers + [(c.hidden_size, c.vocab_size)]


def expected_extra(method: str, arch: str) -> int:
    s = shapes(arch)
    lora = sum(RANK * (i + o) for i, o in s)
    return {
        "scalabl": 2 * RANK * len(s),  # mu and log sigma of the r-dim s per module
        "blob": sum(RANK * i for i, _ in s),  # a std for every entry of A
        "tfb": (RANK + 1) * len(s),  # singular values and beta per module
        "ensemble": (K - 1) * lora,
        "laplace": sum(i * i + 2 * RANK * RANK + o * o for i, o in s),  # KFAC factors of A and B
        "ivon": lora,  # a posterior variance per LoRA weight
        "blora_xs": (2 + 10) * RANK * RANK * len(s),  # SWAG's mean, second moment, K = 10 deviations
    }.get(method, 0)


def method_config(method: str, arch: str) -> MethodConfig:
    return MethodConfig(
        method=method,
        rank=RANK,
        target_modules=targets(arch),
        ensemble_size=K,
        tfb_samples=2,
        tfb_search_steps=2,
        laplace_max_train=4,
    )


@pytest.fixture(scope="module", params=[(a, m) for a in TINY_ARCHITECTURES for m in METHODS], ids=str)
def fitted(request) -> tuple[str, str, BayesianLoRA]:
    torch.set_num_threads(1)
    arch, method = request.param
    blora = BayesianLoRA(make_tiny_model(arch), make_byte_tokenizer(), method_config(method, arch), seed=0)
    blora.fit(TRAIN, steps=2, batch_size=4, lr=1e-2, seed=0, progress=False)
    blora.calibrate(VALIDATION, train=TRAIN, config=PredictConfig(n_samples=2, seed=0))
    return arch, method, blora


def test_trains_and_predicts_distributions(fitted):
    arch, method, blora = fitted
    assert len(blora.history) >= 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in blora.history)
    for s in (0, 2):
        p = blora.predict_proba(TEST, n_samples=s, seed=0)
        assert p.shape == (len(TEST), 4) and torch.all(p >= 0)
        assert torch.allclose(p.sum(-1), torch.ones(len(TEST), dtype=torch.float64), atol=1e-9)
        for i, e in enumerate(TEST):
            assert torch.all(p[i, len(e.choices) :] == 0)


def test_saves_and_reloads(fitted, tmp_path):
    arch, method, blora = fitted
    blora.save(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter.safetensors", "pt") as f:  # the adapter, never the base's head
        keys = list(f.keys())
    # besides the adapter, a posterior held outside it: Laplace's curvature, IVON's Hessian
    assert all("lora_" in k or k.startswith(("laplace.", "ivon.")) for k in keys), keys
    loaded = BayesianLoRA.load(tmp_path, make_tiny_model(arch), make_byte_tokenizer())
    assert loaded.config == blora.config
    for s in (0, 2):
        assert torch.equal(
            loaded.predict_log_proba(TEST, n_samples=s, seed=1),
            blora.predict_log_proba(TEST, n_samples=s, seed=1),
        )


def test_exports_to_stock_peft(fitted, tmp_path):
    arch, method, blora = fitted
    member = 0 if method == "ensemble" else None
    notes = export_peft(blora, tmp_path, base_model=arch, member=member)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == RANK
    base = make_tiny_model(arch)
    tied = base.config.tie_word_embeddings
    assert any("do not merge" in n for n in notes) == tied
    # stock peft warns about the tied head's adapter as the export's note does
    with pytest.warns(UserWarning, match="ensure_weight_tying") if tied else nullcontext():
        stock = PeftModel.from_pretrained(base, str(tmp_path))
    scorer = Scorer(make_byte_tokenizer())
    # the posterior mean, before any temperature (which a peft adapter cannot hold)
    ours = predicted(blora.model, blora.scorer, TEST, n_samples=0)
    assert torch.allclose(predicted(stock, scorer, TEST, n_samples=0), ours, atol=1e-5)


def test_extra_parameter_count_is_exact(fitted):
    arch, method, blora = fitted
    assert blora.extra_parameters == expected_extra(method, arch)
    assert blora.lora_parameters == sum(RANK * (i + o) for i, o in shapes(arch))


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_default_targets_come_from_peft_or_are_refused_with_the_modules_that_exist(arch):
    model = make_tiny_model(arch)
    if arch in FUSED:
        with pytest.raises(ValueError, match="qkv_proj, gate_up_proj"):
            BayesianLoRA(model, make_byte_tokenizer(), MethodConfig(method="scalabl"))
        with pytest.raises(ValueError, match=r"q_proj matched no linear layer.*fused.*qkv_proj"):
            resolve_targets(model, ("q_proj", "lm_head"))
        return
    blora = BayesianLoRA(model, make_byte_tokenizer(), MethodConfig(method="scalabl", rank=RANK))
    assert blora.config.target_modules == ("q_proj", "v_proj")
    assert blora.extra_parameters == 2 * RANK * 2 * tiny_config(arch).num_hidden_layers


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_scorer_applies_the_models_own_head(arch):
    """The scorer runs the head itself (only where scores are read): its letter log-probs must be the
    model's own forward's, soft-capping included."""
    model = make_tiny_model(arch)
    with torch.no_grad():  # logits large enough for a cap of 5 to bend them
        model.get_output_embeddings().weight.mul_(40)
    scorer = Scorer(make_byte_tokenizer(), "letter")
    encoded = [scorer.encode(e) for e in TEST[:1]]
    ids = torch.tensor([encoded[0].prompt])
    with torch.no_grad():
        theirs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        hidden = model.get_decoder()(ids).last_hidden_state[0, -1]
        ours = torch.log_softmax(output_logits(model, model.get_output_embeddings(), hidden).float(), -1)
        raw = torch.log_softmax(model.get_output_embeddings()(hidden).float(), -1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if getattr(model.config, "final_logit_softcapping", None):
        assert not torch.allclose(raw, theirs, atol=1e-3)  # the cap matters at these logits


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_plan_reads_each_config(arch, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(arch).to_dict()))
    model = make_tiny_model(arch)
    for method in ("scalabl", "blob", "ensemble"):
        plan = make_plan(str(path), method=method, rank=RANK, targets=targets(arch), ensemble_size=K)
        assert plan.extra_parameters == expected_extra(method, arch)
        assert plan.lora_parameters == sum(RANK * (i + o) for i, o in shapes(arch))
    base = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert make_plan(str(path), targets=targets(arch)).base_parameters == base
    if arch not in FUSED:  # targets left out: the architecture's defaults
        assert make_plan(str(path)).targets == ("q_proj", "v_proj")
    assert "lm_head" in linear_names(model)
