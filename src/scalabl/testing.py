"""Tiny random models built in memory in milliseconds, for tests and ``--quick`` benchmarks (nothing
is downloaded): a byte-level tokenizer, a small random Llama, alone or saved as a local folder, and
one small random model of each architecture in :data:`TINY_ARCHITECTURES`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)


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


def make_tiny_llama(
    vocab_size: int = 257, hidden: int = 32, layers: int = 2, seed: int = 0
) -> LlamaForCausalLM:
    """A random Llama of ``layers`` decoder layers, ``hidden`` wide, grouped-query attention (4 heads,
    2 key/value heads), untied head; seeded, in eval mode."""
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


BYTE_VOCAB = 257  # the byte tokenizer's 256 bytes and <eos> (id 256)

# What sets each architecture apart, on top of the common tiny shape of :func:`tiny_config`.
TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"tie_word_embeddings": True},  # q/k/v projections carry biases
    "qwen3": {"tie_word_embeddings": True, "head_dim": 8},  # RMS norms on queries and keys
    "gemma2": {  # soft-capped attention and logits, sliding-window layers, tied head
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 8,
        "final_logit_softcapping": 5.0,
        "attn_logit_softcapping": 20.0,
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 8,
        "final_logit_softcapping": 5.0,
        "tie_word_embeddings": True,
    },
    "mistral": {"sliding_window": 64, "head_dim": 8},
    "phi3": {"pad_token_id": 256},  # fused qkv_proj and gate_up_proj
    "olmo2": {},  # norms after attention and MLP, q/k norms
}
# the targets a tiny model of each architecture gets when the user names none (None: refused)
FUSED = {"phi3": ("qkv_proj",)}


def tiny_config(architecture: str, hidden: int = 32, layers: int = 2) -> PretrainedConfig:
    """A transformers config of ``architecture`` (a key of :data:`TINY_ARCHITECTURES`): ``layers``
    layers, ``hidden`` wide, 4 heads of ``hidden / 4`` and 2 key/value heads, the byte vocabulary."""
    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture: {architecture!r}; allowed: {', '.join(TINY_ARCHITECTURES)}")
    common = {
        "vocab_size": BYTE_VOCAB,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "bos_token_id": 256,
        "eos_token_id": 256,
        "pad_token_id": 256,
    }
    return AutoConfig.for_model(architecture, **{**common, **TINY_ARCHITECTURES[architecture]})


def make_tiny_model(
    architecture: str, *, hidden: int = 32, layers: int = 2, seed: int = 0
) -> PreTrainedModel:
    """A random model of ``architecture`` (see :func:`tiny_config`), seeded, float32, in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, hidden, layers), dtype=torch.float32)
    model.eval()
    return model


def save_tiny_architecture(folder: Path, architecture: str, *, hidden: int = 32) -> Path:
    """A tiny model of ``architecture`` and the byte tokenizer saved as a local Hugging Face folder."""
    make_tiny_model(architecture, hidden=hidden).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    return folder
