"""Answers clustered by meaning with a natural-language-inference model (Kuhn et al. 2023): two
answers mean the same when each entails the other. The model is the user's (a hub id or a local
folder of an ``AutoModelForSequenceClassification`` with an "entailment" label); nothing here is
downloaded unless the user names a hub model and is online."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def entailment_label(id2label: dict[int, str], source: str) -> int:
    """The index of the model's entailment class."""
    found = [i for i, name in id2label.items() if str(name).lower().startswith("entail")]
    if len(found) != 1:
        raise ValueError(
            f"nli_model {source}: expected one label starting with 'entail' among {sorted(id2label.values())}"
        )
    return int(found[0])


def nli_equivalence(source: str, model=None, tokenizer=None) -> Callable[[str, str], bool]:
    """``same(a, b)``: whether the NLI model's most likely class for premise ``a``, hypothesis ``b``
    is entailment (the clustering asks both ways). Pairs are cached."""
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    model = (model or AutoModelForSequenceClassification.from_pretrained(source)).eval()
    entail = entailment_label(dict(model.config.id2label), source)

    @functools.lru_cache(maxsize=65536)
    def same(a: str, b: str) -> bool:
        with torch.no_grad():
            inputs = tokenizer(a, b, return_tensors="pt", truncation=True)
            logits = model(**inputs).logits[0]
        return int(logits.argmax()) == entail

    return same
