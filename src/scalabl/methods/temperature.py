"""Temperature scaling (Guo et al., ICML 2017) on plain LoRA: MLE training, then one scalar T fitted
by LBFGS on the cached validation predictions (:mod:`scalabl.calibration`).

Temperature scaling also applies on top of any other method: set ``MethodConfig(temperature=True)``
(``--temperature`` on the command line) and the method's model average is tempered the same way.
"""

from __future__ import annotations

from scalabl.methods.mle import MLE


class Temperature(MLE):
    name = "temperature"
    description = (
        "plain LoRA + a temperature fitted by LBFGS on the validation split (any method: --temperature)"
    )
    reference = "Guo et al., ICML 2017, arXiv:1706.04599"
    temperature_scaled = True
