"""Hugging Face ``SiglipModel`` (TEMPORARY: being written)."""

from __future__ import annotations

from captum_clip.models.base import TextTower, ViTTower

__all__ = ["HFSiglipText", "HFSiglipVision", "is_hf_siglip"]


def is_hf_siglip(model: object) -> bool:
    return False


class HFSiglipVision(ViTTower):
    pass


class HFSiglipText(TextTower):
    pass
