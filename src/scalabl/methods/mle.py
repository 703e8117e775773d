"""MLE: plain LoRA (Hu et al., ICLR 2022) trained with cross-entropy; the baseline every method beats."""

from __future__ import annotations

from scalabl.methods.base import Method


class MLE(Method):
    name = "mle"
    description = "plain LoRA, maximum likelihood (cross-entropy); deterministic predictions"
    reference = "Hu et al., ICLR 2022, arXiv:2106.09685"
