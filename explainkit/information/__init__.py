"""Information-theoretic factor analysis: what layers and units carry about generative factors.

Modules: :mod:`~explainkit.information.gcmi` (Gaussian-copula MI estimators, vectorised over
permutations and bootstrap resamples), :mod:`~explainkit.information.factors` (factors from
``world.json`` or the concept table), :mod:`~explainkit.information.api` (``factor_information``)
and :mod:`~explainkit.information.analyzer` (the ``information`` analyzer).
"""

from explainkit.information.api import FactorInformation, LayerInformation, factor_information
from explainkit.information.factors import Factor, probe_factors, usable_factors
from explainkit.information.gcmi import copnorm, layer_mi, unit_mi

__all__ = ["Factor", "FactorInformation", "LayerInformation", "copnorm", "factor_information", "layer_mi",
           "probe_factors", "unit_mi", "usable_factors"]
