"""SQ-LLaVA's cluster projector (``mm_projector_type`` cluster, STLLaVA-Med's base) converted: its
weights renamed for ``stmed.core.cluster``'s model, and that model built for them.

The original module (heliossun/SQ-LLaVA, llava/model/multimodal_projector/cluster.py) names its
output MLP ``mlp.0`` and ``mlp.2``; the registered class keeps LLaVA's ``linear_1`` and ``linear_2``
beside the cluster's own weights (``c``, ``v``, ``f``, ``sim_alpha``, ``sim_beta``, ``ln_1``).
"""

from __future__ import annotations

KIND = "cluster"  # config.json's mm_projector_type


def weights(proj: dict) -> dict:
    """The projector's weights (keys without ``model.mm_projector.``) under the target module's names."""
    return {k.replace("mlp.0.", "linear_1.").replace("mlp.2.", "linear_2."): v for k, v in proj.items()}


def config_and_class(common: dict):
    """(config, model class) of a LLaVA with the cluster projector; ``common``: LlavaConfig's keywords."""
    from stmed.core.cluster import NUM_CENTERS, register

    config_cls, model_cls = register()
    return config_cls(**common, cluster_centers=NUM_CENTERS), model_cls
