"""Every option of scalabl, defined once: the config dataclasses and their fields' help.

* :class:`MethodConfig`: the adapter and the posterior (:mod:`scalabl.config.method`);
* :class:`TrainConfig`: the optimisation (:mod:`scalabl.config.train`);
* :class:`PredictConfig`: one prediction (:mod:`scalabl.config.predict`);
* :class:`RunConfig`: a whole run, holding a MethodConfig and a TrainConfig (:mod:`scalabl.config.run`).

The fixed values of string options are the enums of :mod:`scalabl.choices`; the command line is
built from the fields (:mod:`scalabl.config.flags`). Nothing here imports torch.
"""

from scalabl.config.method import MethodConfig
from scalabl.config.predict import PredictConfig
from scalabl.config.run import RunConfig
from scalabl.config.train import TrainConfig

__all__ = ["MethodConfig", "PredictConfig", "RunConfig", "TrainConfig"]
