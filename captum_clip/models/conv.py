"""Convolutional image towers: the last-stage feature map is the patch grid."""

from __future__ import annotations

from torch import Tensor, nn

from captum_clip.models.base import VisionTower

__all__ = ["OpenClipResNet"]


class OpenClipResNet(VisionTower):
    """open_clip ``ModifiedResNet`` (pixel-mode methods only)."""

    pool_type = "attn"  # AttentionPool2d

    @property
    def blocks(self) -> list[nn.Module]:
        m = self.module
        return [m.layer1, m.layer2, m.layer3, m.layer4]

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.module.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return (h // 32, w // 32)

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        stop = self.block_index(layer) + 1
        m = self.module
        x = images.to(dtype=m.conv1.weight.dtype)
        x = m.stem(x)
        for block in self.blocks[:stop]:
            x = block(x)
        return x.permute(0, 2, 3, 1)


class TimmConv(VisionTower):
    """open_clip ``TimmModel`` over a convolutional timm trunk (TEMPORARY: being written)."""
