"""PatchNCE (Park et al. 2020, "Contrastive Learning for Unpaired Image-to-Image Translation"): the parts CUT trains with.

A patch of the translation should be closer, in the generator's own encoder features, to the patch of the input at the
same place than to the input's other patches. :class:`PatchSampler` (the paper's F) picks the same ``num_patches``
places in the features of the input and of its translation and embeds each patch with a small MLP per layer;
:func:`patch_nce_loss` is the InfoNCE cross-entropy over them, negatives drawn from the same image only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unpaired.plugin_api import Choice, FeatureEncoder, describe, feature_layers


class PatchSampler(nn.Module):
    """F: per encoder layer, an MLP (Linear, ReLU, Linear to ``channels``) on sampled patches, then L2-normalised.

    ``layer_channels`` are the channels of each layer's features: the MLPs are made from them when F is built, before
    any optimiser or checkpoint, so that a resumed run restores F like any other network.
    """

    def __init__(self, layer_channels: Sequence[int], channels: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, channels), nn.ReLU(), nn.Linear(channels, channels)) for c in layer_channels)

    @staticmethod
    def places(features: Sequence[Tensor], num_patches: int) -> list[Tensor]:
        """For each layer, ``num_patches`` distinct positions (all of them when there are fewer), the same for every
        image of the batch, as the paper's code: the places of the largest of as many uniform draws as positions,
        drawn on the features' device from its default generator (saved with every checkpoint; no host sync)."""
        return [torch.rand(f.shape[2] * f.shape[3], device=f.device).topk(min(num_patches, f.shape[2] * f.shape[3])).indices for f in features]

    def forward(self, features: Sequence[Tensor], places: Sequence[Tensor]) -> list[Tensor]:
        """Each layer's patches at ``places`` embedded and normalised: (N, P, channels) per layer."""
        embedded = []
        for mlp, feature, at in zip(self.mlps, features, places):
            patches = feature.flatten(2).transpose(1, 2)[:, at]  # (N, H*W, C) -> (N, P, C)
            x = mlp(patches)
            embedded.append(x / (x.norm(dim=-1, keepdim=True) + 1e-7))
        return embedded


def patch_nce_loss(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """The mean over patches of the cross-entropy of picking patch ``i`` of ``keys`` for query ``i`` among all patches
    of the same image, by similarity ``q . k / temperature``; both (N, P, C). Keys get no gradient (the paper's code)."""
    logits = torch.bmm(queries, keys.detach().transpose(1, 2)) / temperature  # (N, P, P): positives on the diagonal
    targets = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def layers_nce_loss(queries: Sequence[Tensor], keys: Sequence[Tensor], temperature: float) -> Tensor:
    """:func:`patch_nce_loss` of each layer's embedded patches (:class:`PatchSampler`), averaged over the layers."""
    return torch.stack([patch_nce_loss(q, k, temperature) for q, k in zip(queries, keys)]).mean()


def layer_problems(generator: Choice | None, layers: Sequence[str]) -> list[tuple[str, str]]:
    """Why PatchNCE cannot compare ``layers`` of the chosen generator: it gives no encoder features, or not all of these."""
    if generator is None:  # it did not resolve: that is the problem reported
        return []
    available = feature_layers(generator)
    if available is None:
        why = "gives no encoder features (unpaired.plugin_api.FeatureEncoder), which PatchNCE needs; choose a generator that does (resnet)"
        return [("generator.name", f"{describe(generator, 'generator')} {why}")]
    unknown = [name for name in layers if name not in available]
    why = f"has no layer {', '.join(unknown)}; its layers: {', '.join(available)}"
    return [("method.nce_layers", f"{describe(generator, 'generator')} {why}")] if unknown else []


@torch.no_grad()
def feature_channels(encoder: FeatureEncoder, layers: Sequence[str], image_size: int, device: torch.device) -> list[int]:
    """The channels of each of ``layers`` for images of ``image_size`` px: what F's MLPs are made for (the paper's code
    learns them from the first batch). ``encoder`` is an ``nn.Module`` on ``device``, back in training mode after."""
    network = cast(nn.Module, encoder).eval()
    try:
        return [f.shape[1] for f in encoder.encode(torch.zeros(1, 3, image_size, image_size, device=device), layers)]
    finally:
        network.train()
