"""SQ-LLaVA's "prototype extractor" projector (``--mm_projector_type cluster``), the projector of
STLLaVA-Med's base model, as a LLaVA whose projector is replaced: a converted STLLaVA-Med release
(``stmed convert``) loads through ``AutoModelForImageTextToText`` with no remote code, because
``register()`` (called by stmed's loader) names this class under its own model_type.

What the projector computes, as heliossun/SQ-LLaVA's llava/model/multimodal_projector/cluster.py
(``Clustering(mm_hidden_size, hidden_size, 256, 2)``, built in builder.py) defines it, for patch
features x [B, L, D]:

    value = v(x), feature = f(x)
    centres = adaptive-avg-pool(x over L to N), centre_feature = adaptive-avg-pool(feature)
    twice: centres = c(centres); attn = softmax over the N centres of unit(centres) @ value normalised over L;
            centres = attn @ feature
    sim = sigmoid(beta + alpha * cos(centres, x)); each patch keeps only its nearest centre's sim (hard mask)
    pooled = (sum of masked sim * feature over L + centre_feature) / (patches per centre + 1)
    out = mlp(x + sum over centres of masked sim * pooled): Linear D->H, QuickGELU, Linear H->H

Its LayerNorm ``ln_1`` is defined there but never applied; it is kept so the weights round-trip.
"""

from __future__ import annotations

MODEL_TYPE = "stmed_llava_cluster"
NUM_CENTERS = 256  # Clustering(..., 256, 2) in builder.py
ITERATIONS = 2

_registered = False


def _classes():
    """(config class, model class), built on first use: torch and transformers load only here."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    class ClusterLlavaConfig(LlavaConfig):
        model_type = MODEL_TYPE

        def __init__(self, cluster_centers: int = NUM_CENTERS, cluster_iterations: int = ITERATIONS, **kwargs):
            self.cluster_centers = cluster_centers
            self.cluster_iterations = cluster_iterations
            super().__init__(**kwargs)

    class ClusterProjector(nn.Module):
        def __init__(self, config):
            super().__init__()
            d, h = config.vision_config.hidden_size, config.text_config.hidden_size
            self.iterations, self.centers = config.cluster_iterations, config.cluster_centers
            self.sim_alpha = nn.Parameter(torch.ones(1, 1, 1))
            self.sim_beta = nn.Parameter(torch.zeros(1, 1, 1))
            self.c, self.v, self.f = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.ln_1 = nn.LayerNorm(d)  # unused by the original forward; kept for the weights
            self.linear_1, self.linear_2 = nn.Linear(d, h), nn.Linear(h, h)

        def forward(self, x):
            value, feature = self.v(x), self.f(x)  # [B, L, D]
            centres = F.adaptive_avg_pool1d(x.transpose(1, 2), self.centers).transpose(1, 2)  # [B, N, D]
            centre_feature = F.adaptive_avg_pool1d(feature.transpose(1, 2), self.centers).transpose(1, 2)
            # As the original: value is normalised along the patch axis (it is [B, D, L] there and
            # F.normalize(dim=-1) takes L), not along the features as the centres are.
            unit_value = F.normalize(value, dim=1)
            for _ in range(self.iterations):
                centres = self.c(centres)
                attn = torch.softmax(F.normalize(centres, dim=-1) @ unit_value.transpose(1, 2), dim=1)  # [B, N, L]
                centres = attn @ feature
            cos = F.normalize(centres, dim=-1) @ F.normalize(x, dim=-1).transpose(1, 2)
            sim = torch.sigmoid(self.sim_beta + self.sim_alpha * cos)  # [B, N, L]
            mask = torch.zeros_like(sim).scatter_(1, sim.argmax(dim=1, keepdim=True), 1.0)
            sim = sim * mask
            pooled = (sim @ feature + centre_feature) / (mask.sum(dim=-1, keepdim=True) + 1.0)  # [B, N, D]
            out = x + sim.transpose(1, 2) @ pooled  # each patch gets its one centre's prototype
            h = self.linear_1(out)
            return self.linear_2(h * torch.sigmoid(1.702 * h))  # QuickGELU, as the original's mlp

    class ClusterLlavaForConditionalGeneration(LlavaForConditionalGeneration):
        config_class = ClusterLlavaConfig

        def __init__(self, config):
            super().__init__(config)
            self.model.multi_modal_projector = ClusterProjector(config)
            self.post_init()

    return ClusterLlavaConfig, ClusterLlavaForConditionalGeneration


def register():
    """Name the cluster LLaVA under MODEL_TYPE for AutoConfig and AutoModelForImageTextToText
    (idempotent); returns (config class, model class)."""
    global _registered, _cached
    if _registered:
        return _cached
    from transformers import AutoConfig, AutoModelForImageTextToText

    config_cls, model_cls = _classes()
    AutoConfig.register(MODEL_TYPE, config_cls)
    AutoModelForImageTextToText.register(config_cls, model_cls)
    _cached, _registered = (config_cls, model_cls), True
    return _cached


_cached = None
