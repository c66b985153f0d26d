"""Adapters and own explanations of the seed papers' prototype models (:mod:`explainkit.prototypes.models`).

One module per model, each registering an adapter kind (:mod:`explainkit.prototypes.registry`) that
``adapter="auto"`` picks when the model has the layers the paper describes (read by attribute name,
so a user's own implementation with the same names is read too):

===================  ==========================================================================
kind                 reads
===================  ==========================================================================
``case_based``       ``encoder`` / ``decoder`` / ``prototypes`` (whole codes) / ``last_layer``
``st_protopnet``     ``prototype_vectors_{support,trivial}``, ``add_on_layers_{support,trivial}``
``tversky``          a module with ``prototypes``, ``features``, ``alpha``, ``beta``, ``theta``
``hopfield``         a module with ``stored_patterns`` and ``beta`` (its forward: retrieval weights)
``cbc``              ``components``, ``log_sigma`` and ``reasoning`` or ``rbf_head``
``prob_psenn``       ``prototype_mean`` and ``prototype_log_sigma`` (Gaussian prototypes)
``scaleprotoseg``    ``prototype_vectors``, ``group_projection``, ``last_layer_group``, ``scale_head`` or
                     ``add_on_layers``, ``prototype_scale`` or ``scale_num_prototypes`` (segmentation)
===================  ==========================================================================
"""
