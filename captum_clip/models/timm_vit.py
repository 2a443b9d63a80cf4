"""timm attention towers inside open_clip ``TimmModel`` (TEMPORARY: being written)."""

from __future__ import annotations

from torch import nn

from captum_clip.models.base import ViTTower

__all__ = ["TimmViT", "is_timm_attention"]


def is_timm_attention(trunk: nn.Module) -> bool:
    return False


class TimmViT(ViTTower):
    pass
