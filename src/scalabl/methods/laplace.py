"""Laplace-LoRA: a post-hoc Laplace approximation on the LoRA weights (Yang et al., ICLR 2024,
arXiv:2308.13111), computed with the ``laplace-torch`` package (Daxberger et al., NeurIPS 2021).

Train plain LoRA (MLE); then, post hoc, fit a Gaussian ``N(theta_MAP, (H + lambda I)^-1)`` around
the trained LoRA weights, with ``H`` the curvature (generalised Gauss-Newton) of the training loss
and ``lambda`` the prior precision, chosen by maximising the marginal likelihood. Everything
Bayesian here is laplace-torch's: :class:`laplace.Laplace` builds the approximation, its default
``CurvlinopsGGN`` backend (the curvlinops package) computes the curvature, ``optimize_prior_precision
(method="marglik")`` picks lambda, ``sample`` draws weights and ``__call__(pred_type="glm")`` gives
the linearised predictive. scalabl only adapts the model to it:

* laplace-torch wants a classifier ``X -> [B, C]``: :class:`ExampleClassifier` maps a batch of
  example indices to the scorer's class logits (absent choices get a large negative logit, not
  ``-inf``, so the loss's curvature stays finite; their probability is still exactly 0 after
  renormalising);
* the parameters are the LoRA weights only (laplace-torch takes those with ``requires_grad``);
  ``laplace_subset="last_layer"`` restricts them to the adapters of the last adapted transformer
  layer, Laplace-LoRA's LLLA. (laplace-torch's own ``last_layer`` mode linearises the network's
  final linear layer, which does not apply: the class logits are log-likelihoods of choice tokens,
  not a linear function of some last features.)
* ``laplace_hessian``: ``kron`` (KFAC) or ``diag``; the curvature is estimated on the first
  ``laplace_max_train`` training examples (a compute budget) and rescaled to the full N.

Predictive: ``glm`` (default, as in Laplace-LoRA) is laplace-torch's linearised predictive with
the probit approximation, returned as one averaged distribution (S only switches it on; S = 0 is
the MAP). ``mc`` draws S weight vectors from the posterior and runs the network with each: on
SmolLM2/ARC-Easy the marglik posterior is so wide in weight space that sampled networks answer at
chance (ACC 0.25, NLL 7.8 with S = 5, against the MAP's 0.62 / 1.84), the known failure of the
"nn" predictive that the linearisation avoids. ``n_samples = 0`` is the MAP (the trained LoRA).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from torch.nn.utils import vector_to_parameters
from torch.utils.data import DataLoader, TensorDataset

from scalabl.bayesian import layer_index, lora_layers
from scalabl.choices import LaplaceHessian, LaplacePredictive, LaplaceSubset
from scalabl.config import MethodConfig, PredictConfig
from scalabl.examples import Example
from scalabl.methods.base import Method, reject_subset
from scalabl.predict import predict_samples
from scalabl.scoring import Scorer

ABSENT_LOGIT = -1e4  # stands for -inf: exp underflows to exactly 0 in float32, its gradients are finite
PREFIX = "laplace."
_HESSIAN_CLASSES = {"kron": "KronLaplace", "diag": "DiagLaplace"}


class ExampleClassifier(nn.Module):
    """A classifier for laplace-torch: a LongTensor of indices into ``examples`` -> class logits ``[B, C]``."""

    def __init__(
        self, model: nn.Module, scorer: Scorer | None, examples: Sequence[Example], n_classes: int
    ) -> None:
        super().__init__()
        self.model = model
        self.scorer = scorer
        self.examples = list(examples)
        self.n_classes = n_classes

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        batch = [self.examples[i] for i in index.tolist()]
        logits = self.scorer.class_logits(self.model, batch, sample=False)
        pad = self.n_classes - logits.shape[1]
        if pad > 0:
            logits = torch.nn.functional.pad(logits, (0, pad), value=float("-inf"))
        return logits.masked_fill(torch.isinf(logits), ABSENT_LOGIT)


def _import_laplace():
    try:
        import laplace
    except ImportError as err:
        raise ImportError(
            "the laplace method needs the laplace-torch package: pip install 'scalabl[laplace]' "
            "(it needs torchvision; see the README for the torch/torchvision pair)"
        ) from err
    return laplace


class LaplaceLoRA(Method):
    name = "laplace"
    description = "Laplace-LoRA: post-hoc Gaussian around the trained LoRA (laplace-torch; KFAC or diag)"
    reference = "Yang et al., ICLR 2024, arXiv:2308.13111; laplace-torch (Daxberger et al., NeurIPS 2021)"
    bayesian = True

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.la = None  # the fitted laplace-torch object
        self.classifier: ExampleClassifier | None = None

    # ---- which parameters --------------------------------------------------------------------------
    def posterior_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The LoRA weights the posterior covers, in model order."""
        named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
        if self.config.laplace_subset == LaplaceSubset.ALL:
            return named
        layers = [name for name, _ in lora_layers(model)]
        index = [-1 if (i := layer_index(n)) is None else i for n in layers]
        last = max(index)
        keep = {n for n, i in zip(layers, index, strict=True) if i == last} if last >= 0 else {layers[-1]}
        return [(n, p) for n, p in named if any(n.startswith(k + ".") for k in keep)]

    @contextmanager
    def _only_posterior_trainable(self, model: nn.Module) -> Iterator[list[nn.Parameter]]:
        """laplace-torch covers the parameters with ``requires_grad``: exactly ours, for the block."""
        before = {n: p.requires_grad for n, p in model.named_parameters()}
        chosen = self.posterior_parameters(model)
        names = {n for n, _ in chosen}
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        try:
            yield [p for _, p in chosen]
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(before[n])

    def _new_laplace(
        self, model: nn.Module, scorer: Scorer | None, examples: Sequence[Example], n_classes: int
    ):
        laplace = _import_laplace()
        self.classifier = ExampleClassifier(model, scorer, examples, n_classes)
        return laplace.Laplace(
            self.classifier,
            "classification",
            subset_of_weights="all",
            hessian_structure=self.config.laplace_hessian.value,
            prior_precision=1.0 / self.prior_std**2,
        )

    # ---- post hoc ----------------------------------------------------------------------------------
    def post_fit(
        self,
        model: nn.Module,
        scorer: Scorer,
        *,
        train: Sequence[Example],
        validation: Sequence[Example],
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Fit the curvature on the first ``laplace_max_train`` training examples, then the prior by marglik."""
        examples = list(train)[: self.config.laplace_max_train]
        if not examples:
            raise ValueError("laplace: the Hessian needs training examples (train is empty)")
        t0 = time.perf_counter()
        n_classes = max(len(e.choices) for e in examples)
        labels = torch.tensor([e.label for e in examples])
        loader = DataLoader(TensorDataset(torch.arange(len(examples)), labels), batch_size=4)
        was_training = model.training
        model.eval()
        with self._only_posterior_trainable(model) as params:
            self.la = self._new_laplace(model, scorer, examples, n_classes)
            self.la.fit(loader)
            # The curvature was summed over the subset: rescale it to the N examples of the full loss.
            self._rescale(len(train) / len(examples))
            initial = float(self.la.prior_precision.mean())
            with warnings.catch_warnings():
                # laplace-torch reminds classification users to predict with the link approximation they
                # fit for; _glm always asks for probit, its default here.
                warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
                self.la.optimize_prior_precision(method="marglik")
            log_marglik = float(self.la.log_marginal_likelihood().detach())
        model.train(was_training)
        return {
            "prior_precision": float(self.la.prior_precision.mean()),
            "prior_precision_initial": initial,
            "log_marginal_likelihood": log_marglik,
            "posterior_parameters": sum(p.numel() for p in params),
            "hessian_examples": len(examples),
            "seconds": time.perf_counter() - t0,
        }

    def _rescale(self, factor: float) -> None:
        if factor == 1.0:
            return
        self.la.H = self.la.H * factor if torch.is_tensor(self.la.H) else self._scaled_kron(factor)
        self.la.n_data = round(self.la.n_data * factor)
        self.la.loss = self.la.loss * factor

    def _scaled_kron(self, factor: float):
        # A Kronecker-factored H is rescaled on one factor of each block (the product scales by factor).
        facs = self.la.H_facs
        facs.kfacs = [[f[0] * factor, *f[1:]] for f in facs.kfacs]
        return facs.decompose(damping=self.la.damping)

    # ---- predict -----------------------------------------------------------------------------------
    def predict_samples(
        self, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
    ) -> torch.Tensor:
        reject_subset(self.name, config.sample_modules)
        one_pass = replace(config, n_samples=0)
        if config.n_samples == 0:
            return predict_samples(model, scorer, examples, one_pass)
        if self.la is None:
            raise ValueError("laplace: no posterior fitted yet; call calibrate() after training")
        was_training = model.training
        model.eval()
        try:
            with self._only_posterior_trainable(model) as params:
                if self.config.laplace_predictive == LaplacePredictive.GLM:
                    self.classifier.model, self.classifier.scorer = model, scorer
                    return self._glm(examples)[None]
                generator = torch.Generator(device=self.la._device).manual_seed(config.seed)
                thetas = self.la.sample(config.n_samples, generator=generator)
                out = []
                try:
                    for theta in thetas:
                        with torch.no_grad():
                            vector_to_parameters(theta, params)
                        out.append(predict_samples(model, scorer, examples, one_pass)[0])
                finally:
                    with torch.no_grad():
                        vector_to_parameters(self.la.mean, params)  # back to the MAP, always
                return torch.stack(out)
        finally:
            model.train(was_training)

    def _glm(self, examples: Sequence[Example]) -> torch.Tensor:
        """laplace-torch's linearised predictive (probit), absent choices renormalised away: log-probs ``[N, C]``."""
        c_max = max(len(e.choices) for e in examples)
        self.classifier.examples = list(examples)
        self.classifier.n_classes = c_max
        chunks = []
        # One example per call: the Jacobian of C outputs w.r.t. every posterior weight is C backward
        # passes batched by torch.func; 8 examples at once took more than 24 GB on SmolLM2-135M.
        for start in range(len(examples)):
            index = torch.tensor([start])
            probs = self.la(index, pred_type="glm", link_approx="probit").detach().double().cpu()
            n = torch.tensor([len(examples[i].choices) for i in index.tolist()])
            present = torch.arange(c_max)[None, :] < n[:, None]
            probs = probs.masked_fill(~present, 0.0)
            chunks.append((probs / probs.sum(-1, keepdim=True)).log())
        return torch.cat(chunks)

    # ---- persist -----------------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        state = super().adapter_state(model)
        if self.la is None:
            return state
        sd = self.la.state_dict()
        for key in ("mean", "loss", "prior_mean", "prior_precision", "sigma_noise"):
            state[PREFIX + key] = torch.as_tensor(sd[key]).detach().cpu().clone()  # laplace aliases some
        state[PREFIX + "n_data"] = torch.tensor(sd["n_data"])
        state[PREFIX + "n_outputs"] = torch.tensor(sd["n_outputs"])
        state[PREFIX + "temperature"] = torch.tensor(float(sd["temperature"]), dtype=torch.float64)
        if torch.is_tensor(sd["H"]):
            state[PREFIX + "H"] = sd["H"].detach().cpu().clone()
        else:
            for i, block in enumerate(sd["H"]):
                for j, factor in enumerate(block):
                    state[f"{PREFIX}H.{i}.{j}"] = factor.detach().cpu().clone()
        return state

    def load_adapter_state(self, model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
        ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        super().load_adapter_state(
            model, {k: v for k, v in state.items() if not k.startswith(PREFIX)}, source
        )
        if not ours:
            return  # saved before calibrate(): the MAP only
        if "mean" not in ours:
            raise ValueError(f"{source}: the Laplace posterior is incomplete (no {PREFIX}mean)")
        if self.config.laplace_hessian == LaplaceHessian.DIAG:
            hessian: Any = ours["H"]
        else:
            blocks: dict[int, dict[int, torch.Tensor]] = {}
            for key, v in ours.items():
                if key.startswith("H."):
                    i, j = map(int, key.split(".")[1:])
                    blocks.setdefault(i, {})[j] = v
            hessian = [[blocks[i][j] for j in sorted(blocks[i])] for i in sorted(blocks)]
        n_classes = int(ours["n_outputs"])
        with self._only_posterior_trainable(model):
            # The scorer and examples only matter for GLM predictions, which set their own.
            self.la = self._new_laplace(model, None, [], n_classes)
            self.la.load_state_dict(
                {
                    "mean": ours["mean"],
                    "H": hessian,
                    "loss": ours["loss"],
                    "prior_mean": ours["prior_mean"],
                    "prior_precision": ours["prior_precision"],
                    "sigma_noise": ours["sigma_noise"],
                    "n_data": int(ours["n_data"]),
                    "n_outputs": n_classes,
                    "likelihood": "classification",
                    "temperature": float(ours["temperature"]),
                    "enable_backprop": False,
                    "cls_name": _HESSIAN_CLASSES[self.config.laplace_hessian],
                }
            )

    def extra_parameters(self, model: nn.Module) -> int:
        """The numbers the stored posterior adds: the Hessian's diagonal or its Kronecker factors."""
        if self.la is None:
            return 0
        sd_h = self.la.state_dict()["H"]
        if torch.is_tensor(sd_h):
            return sd_h.numel()
        return sum(f.numel() for block in sd_h for f in block)
