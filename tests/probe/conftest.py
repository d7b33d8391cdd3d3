"""Shared fixtures of the probe tests: a tiny random ViT (16 tokens + a class token) and tiny images."""

import pytest
import torch

from vizoo.probe.features import BackboneSpec, create_backbone

TINY_VIT = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return create_backbone(BackboneSpec("vit_tiny_patch16_224", dict(TINY_VIT), pretrained=False))


@pytest.fixture(scope="session")
def tiny_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(22, 3, 16, 16, generator=g)
    labels = torch.arange(22) % 3
    return torch.utils.data.TensorDataset(images, labels)
