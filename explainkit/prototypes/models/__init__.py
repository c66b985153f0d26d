"""Small reference implementations of the seed papers' prototype models (tests, docs, demos).

Each module holds one model's layers, its equations as functions on tensors, and a factory that
``--arch explainkit.models:NAME(...)`` builds (the factories are re-exported by
:mod:`explainkit.models`):

======================  ===========================================================  =================
factory                 model (paper)                                                module
======================  ===========================================================  =================
``case_based_net``      autoencoder + latent prototypes, R1/R2 (Li et al., AAAI 2018)  ``casebased``
``st_protopnet``        support and trivial prototypes (Wang et al., ICCV 2023)       ``stprotopnet``
``tversky_net``         Tversky projection layer (Doumbouya et al., 2025)             ``tversky``
``hopfield_net``        modern Hopfield association (Ramsauer et al., ICLR 2021)      ``hopfield``
``cbc_net``             RBF detection + CBC reasoning (Saralajew et al. 2019, 2025)  ``cbc``
``prob_psenn``          Gaussian prototypes (Vadillo et al., 2024)                    ``probpsenn``
======================  ===========================================================  =================

The adapters that read them for the prototypes analyzer are in
:mod:`explainkit.prototypes.model_adapters`; training recipes are in ``explainkit.datasets``.
"""

from __future__ import annotations

#: Factory name → defining module (imported lazily by :mod:`explainkit.models`).
FACTORIES = {
    "case_based_net": "explainkit.prototypes.models.casebased",
    "st_protopnet": "explainkit.prototypes.models.stprotopnet",
    "tversky_net": "explainkit.prototypes.models.tversky",
    "hopfield_net": "explainkit.prototypes.models.hopfield",
    "cbc_net": "explainkit.prototypes.models.cbc",
    "prob_psenn": "explainkit.prototypes.models.probpsenn",
}

__all__ = ["FACTORIES"]
