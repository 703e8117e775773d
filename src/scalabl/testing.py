"""Tiny random models built in memory in milliseconds, for tests and ``--quick`` benchmarks (nothing
is downloaded): a byte-level tokenizer and a small random Llama, alone or saved as a local folder."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


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
