"""Network Dissection (Bau et al., CVPR 2017): label units by the IoU of their top-quantile masks with concept masks.

Modules, one concern each: :mod:`~explainkit.dissect.quantile` (exact mergeable top-quantile
thresholds), :mod:`~explainkit.dissect.masks` (concept masks at the input geometry),
:mod:`~explainkit.dissect.tally` (the mergeable state and the IoU tallies),
:mod:`~explainkit.dissect.labels` (labels, CIs and tests), :mod:`~explainkit.dissect.api`
(``dissect`` on arrays), :mod:`~explainkit.dissect.stream` (batches and probe sets into states) and
:mod:`~explainkit.dissect.analyzer` (the ``dissect`` analyzer).
"""

from explainkit.dissect.api import dissect, dissect_tally
from explainkit.dissect.labels import UnitLabel, label_units
from explainkit.dissect.tally import DissectState, Tally, tally

__all__ = ["DissectState", "Tally", "UnitLabel", "dissect", "dissect_tally", "label_units", "tally"]
