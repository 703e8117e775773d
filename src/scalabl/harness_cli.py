"""``scalabl-lm-eval``: lm-evaluation-harness's command line with ``--model scalabl`` registered.

The harness (0.4) finds models only in its own list, so its ``lm_eval`` command cannot see a model
another package registers; this one imports :mod:`scalabl.harness` first and then runs the harness's
own command line with the same arguments (``scalabl-lm-eval --model scalabl --model_args
run=RUN_DIR,n_samples=10 --tasks ...``).
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> None:
    """Run the harness's command line (``sys.argv`` as it is) with the scalabl model registered."""
    if importlib.util.find_spec("lm_eval") is None:
        sys.exit("scalabl-lm-eval needs lm-evaluation-harness: pip install 'scalabl[lm-eval]'")
    from lm_eval.__main__ import cli_evaluate

    import scalabl.harness  # noqa: F401  (registers --model scalabl)

    cli_evaluate()


if __name__ == "__main__":
    main()
