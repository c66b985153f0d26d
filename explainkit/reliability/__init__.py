"""Probe-set sensitivity and concept learnability of unit labels (Ramaswamy et al., CVPR 2023).

Modules: :mod:`~explainkit.reliability.stability` (bootstrap and second-probe label stability),
:mod:`~explainkit.reliability.learnability` (cross-validated linear probes per concept) and
:mod:`~explainkit.reliability.analyzer` (the ``reliability`` analyzer).
"""

from explainkit.reliability.learnability import ProbeResult, linear_probe
from explainkit.reliability.stability import (
    bootstrap_indices,
    dissect_bootstrap_labels,
    invert_bootstrap_labels,
    label_stability,
    probe_agreement,
)

__all__ = ["ProbeResult", "bootstrap_indices", "dissect_bootstrap_labels", "invert_bootstrap_labels",
           "label_stability", "linear_probe", "probe_agreement"]
