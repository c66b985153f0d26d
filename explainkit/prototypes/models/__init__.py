"""Small reference implementations of the seed papers' prototype models (tests, docs, demos).

Each module holds one model's layers, its equations as functions on tensors and the network class
(over any backbone). :mod:`explainkit.models` has factories that put them on TinyCNN blocks (usable
as ``--arch explainkit:NAME(...)``):

======================  ===========================================================  =================
factory                 model (paper)                                                module
======================  ===========================================================  =================
``case_based_net``      autoencoder + latent prototypes, R1/R2 (Li et al., AAAI 2018)  ``casebased``
``st_protopnet``        support and trivial prototypes (Wang et al., ICCV 2023)       ``stprotopnet``
``tversky_net``         Tversky projection layer (Doumbouya et al., 2025)             ``tversky``
``hopfield_net``        modern Hopfield association (Ramsauer et al., ICLR 2021)      ``hopfield``
``cbc_net``             RBF detection + CBC reasoning (Saralajew et al. 2019, 2025)  ``cbc``
``prob_psenn``          Gaussian prototypes (Vadillo et al., 2024)                    ``probpsenn``
``scaleprotoseg``       multi-scale grouped prototypes, segmentation (Porta et al.,   ``scaleprotoseg``
                        WACV 2025)
======================  ===========================================================  =================

The adapters that read them for the prototypes analyzer are in
:mod:`explainkit.prototypes.model_adapters`; training recipes are in ``explainkit.datasets``.
"""
