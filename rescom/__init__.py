"""ResCom: Rebalanced Siamese Contrastive Mining for long-tailed recognition (Zhong et al., 2022).

This package must stay importable without torch: the serving image installs it without the `train` extra and
uses only :mod:`rescom.calibration` and :mod:`rescom.preprocess`. Torch-backed subpackages
(``rescom.models``, ``rescom.losses``, ``rescom.data``, ...) are imported explicitly by whoever needs them.
"""

from rescom.version import __version__

__all__ = ["__version__"]
