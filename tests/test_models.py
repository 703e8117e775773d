"""Model loading: local folders, dtype parsing, cache location and the atomic embedded-model cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUANT_HIDDEN, make_byte_tokenizer, make_tiny_llama

from scalabl import models
from scalabl.models import EMBEDDED_MODEL, cache_dir, embedded_model_path, load_model, parse_dtype


def save_tiny(folder: Path, hidden: int = 32) -> Path:
    make_tiny_llama(hidden=hidden).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
    ],
)
def test_parse_dtype(name, dtype):
    assert parse_dtype(name) is dtype


def test_parse_dtype_error():
    with pytest.raises(ValueError, match="dtype: .int8. not in .*float32"):
        parse_dtype("int8")


def test_load_local_folder_round_trip(tmp_path):
    folder = save_tiny(tmp_path / "tiny")
    model, tok = load_model(folder)
    assert not model.training
    assert tok.padding_side == "left" and tok.pad_token == "<eos>"
    text = "Hello, wörld!"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, make_tiny_llama()(x).logits)
    model16, _ = load_model(str(folder), dtype=torch.bfloat16)
    assert model16.dtype == torch.bfloat16


def test_pad_token_defaults_to_eos(tmp_path):
    folder = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(folder)
    tok = make_byte_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(folder)
    _, loaded = load_model(folder)
    assert loaded.pad_token == loaded.eos_token == "<eos>"


def test_folder_without_weights(tmp_path):
    folder = save_tiny(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"tiny.*weights"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match=r"tiny.*config\.json"):
        load_model(folder)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.gguf"):
        load_model(tmp_path / "x.gguf")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALABL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SCALABL_CACHE")
    assert cache_dir() != tmp_path / "c" and "scalabl" in str(cache_dir())


@pytest.fixture
def fake_embedded(monkeypatch, tmp_path):
    """Point the embedded model at a fake GGUF file and a converter that writes the tiny Llama."""
    monkeypatch.setenv("SCALABL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / models.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"fake gguf")
    monkeypatch.setattr(models, "_embedded_gguf", lambda: gguf)
    calls = []

    def convert(src, out):
        calls.append(src)
        save_tiny(out)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return gguf, calls


def test_embedded_cache_converts_once(fake_embedded, tmp_path):
    gguf, calls = fake_embedded
    path = embedded_model_path()
    assert path == tmp_path / "cache" / "models" / EMBEDDED_MODEL
    marker = json.loads((path / models.CACHE_MARKER).read_text())
    assert marker == {"source": gguf.name, "size": gguf.stat().st_size, "format_version": 1}
    assert embedded_model_path() == path and len(calls) == 1
    model, tok = load_model()  # the alias resolves to the cached folder
    assert model.config.vocab_size == 257 and tok.padding_side == "left"
    assert len(calls) == 1
    gguf.write_bytes(b"another fake gguf")  # a changed source invalidates the cache
    embedded_model_path()
    assert len(calls) == 2


def test_embedded_cache_interrupted(fake_embedded, monkeypatch, tmp_path):
    _, calls = fake_embedded

    def broken(src, out):
        make_tiny_llama().save_pretrained(out)  # half written: weights, no tokenizer, no marker
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_path()
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []  # neither a broken cache nor a leftover temp folder

    # a folder without the marker (e.g. left by an older crash) is not trusted either
    (models_dir / EMBEDDED_MODEL).mkdir()
    monkeypatch.setattr(models, "_convert_gguf", lambda src, out: (calls.append(src), save_tiny(out)))
    path = embedded_model_path()
    assert len(calls) == 1 and (path / models.CACHE_MARKER).is_file()
    assert [p.name for p in models_dir.iterdir()] == [EMBEDDED_MODEL]


@pytest.mark.slow
def test_real_embedded_model(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALABL_CACHE", str(tmp_path))
    model, tok = load_model(EMBEDDED_MODEL)
    assert (tmp_path / "models" / EMBEDDED_MODEL / models.CACHE_MARKER).is_file()
    text = "The capital of France is Paris."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok.pad_token is not None and tok.padding_side == "left"
    batch = tok([text, "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == 49152 == model.config.vocab_size
    assert torch.isfinite(logits).all()
    assert logits.dtype == torch.float32


def test_unknown_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load model 'no-such/model'") as info:
        load_model("no-such/model")
    assert "\n" not in str(info.value)


class Exploit:
    """Unpickling this would run a command: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickled_model_file_is_refused(tmp_path):
    """transformers reads .bin weights with torch.load(weights_only=True): a crafted pickle does not run."""
    import pickle

    folder = save_tiny(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Exploit()}, f, protocol=2)  # torch.load's own protocol
    with pytest.raises(ValueError, match=r"refused by the safe loader \(torch.load weights_only=True\)"):
        load_model(folder)


# ---- devices and quantised bases -----------------------------------------------------------------
def test_auto_device_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_device_without_cuda_is_refused_before_any_cuda_call(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        models.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="not a torch device"):
        models.resolve_device("gpu7")


def test_quant_needs_bitsandbytes(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda n: None if n == "bitsandbytes" else real(n)
    )
    with pytest.raises(ImportError, match=r"pip install 'scalabl\[quant\]'"):
        models.quantization_config("4bit", torch.float32)
    with pytest.raises(ValueError, match="quant: '3bit'"):
        models.quantization_config("3bit", torch.float32)


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantised_base_trains_a_float32_posterior(tmp_path, quant):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from conftest import toy_examples

    from scalabl.api import BayesianLoRA
    from scalabl.bayesian import variational_parameters
    from scalabl.methods import MethodConfig

    model, tok = load_model(save_tiny(tmp_path / "m", hidden=QUANT_HIDDEN), quant=quant, device="cpu")
    linear = bnb.nn.Linear4bit if quant == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(model.model.layers[0].self_attn.q_proj, linear)
    blora = BayesianLoRA(model, tok, MethodConfig(method="scalabl", rank=4))
    examples = toy_examples(8, varied=True)
    history = blora.fit(examples, steps=3, batch_size=4, lr=1e-2, log_every=1, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert {p.dtype for p in variational_parameters(blora.model)} == {torch.float32}
    probs = blora.predict_proba(examples, n_samples=2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(examples), dtype=probs.dtype))


def test_a_gguf_model_cannot_be_quantised_again(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="dequantised on load"):
        load_model(gguf, quant="4bit")
