"""Shared fixtures: a tiny random Llama and a byte-level tokenizer, built offline in milliseconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scalabl.data import Example


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + <eos>) that needs no download."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    return fast


def toy_examples(n: int = 24, seed: int = 0, *, varied: bool = False) -> list[Example]:
    """'a+b=?' with digit choices, the right sum among them: learnable from the question.

    ``varied=False``: three choices ``{s, s+1, s+3} mod 10``; ``varied=True``: 2, 3 or 4 choices
    in turn (so C_max = 4 and some rows have absent choices).
    """
    rng = random.Random(seed)
    out = []
    for k in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        s = a + b
        if varied:
            choices = [s] + rng.sample([d for d in range(10) if d != s], 1 + k % 3)
            rng.shuffle(choices)
        else:
            choices = sorted({s, (s + 1) % 10, (s + 3) % 10})
        out.append(
            Example(
                id=f"q{k}", question=f"{a}+{b}=?", choices=tuple(map(str, choices)), label=choices.index(s)
            )
        )
    return out


def make_tiny_llama(
    vocab_size: int = 257, hidden: int = 32, layers: int = 2, seed: int = 0
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


# bitsandbytes' 4-bit CPU inference path (taken on CPUs with AVX512-BF16) packs weights in blocks of
# 64 input features, so a quantised tiny model needs layers at least that wide.
QUANT_HIDDEN = 64


def save_tiny_model(folder: Path, hidden: int = 32) -> Path:
    """A tiny Llama and the byte tokenizer saved as a local Hugging Face folder (for CLI/run tests)."""
    model = make_tiny_llama(hidden=hidden)
    tokenizer = make_byte_tokenizer()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may reach a hub from the tests."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set the constant it consults too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core machine spin ~100x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()
