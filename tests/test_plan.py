"""scalabl plan: parameter counts from the meta device agree with real wrapped models; memory terms behave."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.choices import EMBEDDED_MODEL
from scalabl.cli import main
from scalabl.methods import METHODS, MethodConfig
from scalabl.plan import adapted_linears, extra_parameters, load_config, make_plan


def tiny_config_file(tmp_path):
    config = make_tiny_llama().config.to_dict()
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("method", [m for m in METHODS if m != "laplace"])
def test_counts_match_the_real_wrapped_model(method, tmp_path):
    plan = make_plan(str(tiny_config_file(tmp_path)), method=method, rank=4, ensemble_size=3)
    blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method=method, rank=4))
    assert plan.lora_parameters == blora.lora_parameters
    assert plan.extra_parameters == blora.extra_parameters
    assert plan.base_parameters == sum(p.numel() for p in make_tiny_llama().parameters())


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_laplace_extra_parameters_match_the_fitted_curvature(hessian):
    pytest.importorskip("laplace")
    blora = BayesianLoRA(
        make_tiny_llama(),
        make_byte_tokenizer(),
        MethodConfig(method="laplace", rank=4, laplace_hessian=hessian, laplace_max_train=4),
    )
    blora.fit(toy_examples(8), steps=1, batch_size=4, progress=False)
    blora.calibrate([], train=toy_examples(8))
    linears = adapted_linears(make_tiny_llama(), ("q_proj", "v_proj"))
    assert extra_parameters("laplace", linears, 4, laplace_hessian=hessian) == blora.extra_parameters


def test_shipped_configs_have_the_published_sizes():
    sizes = {name: make_plan(name, method="mle").base_parameters for name in ("llama-2-7b", "qwen2.5-7b")}
    assert sizes == {"llama-2-7b": 6_738_415_616, "qwen2.5-7b": 7_615_616_512}
    plan = make_plan("llama-2-7b", targets=("q_proj", "v_proj", "lm_head"))
    assert plan.extra_parameters == 1040  # DESIGN §1's headline figure: 65 modules x 2r


def test_memory_terms_move_the_right_way():
    bf16 = make_plan("qwen2.5-32b")
    q4 = make_plan("qwen2.5-32b", quant="4bit")
    q8 = make_plan("qwen2.5-32b", quant="8bit")
    assert q4.memory_gb["weights"] < q8.memory_gb["weights"] < bf16.memory_gb["weights"]
    assert bf16.memory_gb["weights"] == pytest.approx(32_763_876_352 * 2 / 1024**3)
    ckpt = make_plan("qwen2.5-32b", gradient_checkpointing=True)
    assert ckpt.memory_gb["activations"] < bf16.memory_gb["activations"] / 5
    blob = make_plan("qwen2.5-32b", method="blob")
    assert blob.memory_gb["trainable_state"] > bf16.memory_gb["trainable_state"]
    more = make_plan("qwen2.5-32b", n_samples=20)
    assert more.memory_gb["kv_cache"] == pytest.approx(2 * bf16.memory_gb["kv_cache"])


def test_bad_plans_name_the_field(tmp_path):
    path = str(tiny_config_file(tmp_path))
    with pytest.raises(ValueError, match="method"):
        make_plan(path, method="nope")
    with pytest.raises(ValueError, match="target_modules"):
        make_plan(path, targets=("nope",))
    with pytest.raises(ValueError, match=r"rank: 17 exceeds"):
        make_plan(path, rank=17)
    with pytest.raises(ValueError, match="quant"):
        make_plan(path, quant="2bit")


def test_cli_plan_prints_text_and_json(tmp_path, capsys):
    assert main(["plan", "--model", "llama-2-7b", "--method", "blob"]) == 0
    text = capsys.readouterr().out
    assert "base parameters" in text and "6,738,415,616" in text and "memory, training" in text
    assert main(["plan", "--model", "llama-2-7b", "--json", "--quant", "4bit"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["quant"] == "4bit" and plan["memory_gb"]["train_total"] > 0
    assert torch.__version__  # the plan imports torch only to build on the meta device


@pytest.mark.slow
def test_the_shipped_embedded_config_is_the_converted_models():
    """The embedded model's shipped config (read by plan and the bench hashes without converting the
    GGUF file) holds what the converted model's config.json holds."""
    from transformers import AutoConfig

    from scalabl.models import embedded_model_path

    converted = AutoConfig.from_pretrained(embedded_model_path()).to_dict()
    shipped = load_config(EMBEDDED_MODEL).to_dict()
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"):  # fmt: skip
        assert shipped[key] == converted[key], key


def test_default_targets_are_read_from_the_config_alone():
    from scalabl.plan import default_targets_for

    assert default_targets_for(EMBEDDED_MODEL) == ("q_proj", "v_proj")  # no GGUF conversion needed
    assert default_targets_for("qwen2.5-32b") == ("q_proj", "v_proj")
