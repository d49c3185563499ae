"""Image metrics that never touch the network.

torchmetrics' LPIPS builds torchvision's AlexNet with pretrained weights, which downloads them when they are not
cached and crashes offline. We build it only when those weights are already in torch's hub cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn


def alexnet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet AlexNet weights that LPIPS needs."""
    from torchvision.models import AlexNet_Weights

    filename = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def lpips_if_available() -> Optional[nn.Module]:
    """LPIPS (AlexNet) if its weights are on disk, else None. Never downloads."""
    if not alexnet_weights_path().is_file():
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)
