"""The allowed values of the string options, in one light module (the CLI imports it without torch)."""

from __future__ import annotations

METHOD_NAMES = (
    "mle",
    "scalabl",
    "map",
    "mcdropout",
    "ensemble",
    "blob",
    "tfb",
    "laplace",
    "temperature",
)  # registry order; tests check it matches scalabl.methods.METHODS
NOISE_MODES = ("sequence", "shared")
KL_DIRECTIONS = ("correct", "reference")
SCORING_MODES = ("continuation", "letter")
RECIPES = ("elbo", "blob")
EMBEDDED_MODEL = "smollm2-135m-instruct"
LAPLACE_SUBSETS = ("all", "last_layer")
LAPLACE_HESSIANS = ("kron", "diag")
LAPLACE_PREDICTIVES = ("glm", "mc")
TRUNCATION_MODES = ("left", "error")  # a prompt too long for the context: cut its start (warn) or refuse

# bitsandbytes quantisation of the frozen base (the optional [quant] extra)
QUANT_MODES = ("4bit", "8bit")
