"""TCAV (Kim et al., ICML 2018) through captum's ``captum.concept``: CAVs from a concept table, tested scores.

Modules: :mod:`~explainkit.tcav.cav` (concept sets from the table, a seeded captum classifier,
in-memory CAVs), :mod:`~explainkit.tcav.scores` (sign counts, the t-test against random CAVs, Holm)
and :mod:`~explainkit.tcav.analyzer` (the ``tcav`` analyzer).
"""

from explainkit.tcav.cav import CachedTCAV, ConceptSets, SeededLinearClassifier, concept_sets
from explainkit.tcav.scores import TcavCounts, TcavTest, tcav_tests

__all__ = ["CachedTCAV", "ConceptSets", "SeededLinearClassifier", "TcavCounts", "TcavTest", "concept_sets",
           "tcav_tests"]
