"""INVERT (Bykov et al., NeurIPS 2023): label neurons with compositional concept formulas.

Modules, one concern each: :mod:`~explainkit.invert.concepts` (the concept table),
:mod:`~explainkit.invert.formula` (left-deep formulas), :mod:`~explainkit.invert.ranks` (rank-sum
AUROC), :mod:`~explainkit.invert.search` (the vectorised beam search),
:mod:`~explainkit.invert.significance` (search/confirm split, DeLong, Mann–Whitney, BH),
:mod:`~explainkit.invert.api` (``label_neurons``), :mod:`~explainkit.invert.connection` (neuron →
class strength) and :mod:`~explainkit.invert.analyzer` (the ``invert`` analyzer). Activations are
read by the shared :mod:`explainkit.adapters.activations`.
"""

from explainkit.invert.api import Explanation, NeuronResult, label_neurons
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.formula import Formula
from explainkit.invert.search import SearchParams, beam_search

__all__ = ["ConceptMatrix", "Explanation", "Formula", "NeuronResult", "SearchParams", "beam_search", "label_neurons"]
