# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Low-rank adapters (LoRA) for fine-tuning the 3D encoder on a robot's own data.

A robot's bags hold a few hundred clusters, far too few to retrain a million
weights without forgetting the synthetic categories; a rank-r update ``B @ A`` beside
each chosen linear layer trains a few percent of the parameters and starts as the
identity (``B = 0``). After training the update is merged back into the layer, so
the saved model has the original architecture: the node, ``p3d eval`` and the ONNX
export load it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
import fnmatch
import math

import torch
from torch import nn

from p3d_perception.config import ConfigError


@dataclass
class LoRAConfig:
    """Which linear layers get adapters, and how large."""

    rank: int = 4
    alpha: float = 8.0
    #: glob patterns over the encoder's module names (PointViT: blocks.0.attn.qkv, ...,
    #: patch_embed.first.0 / .3, patch_embed.second.0 / .3 and pos_embed.0 / .2 for the
    #: per-point and centre layers)
    targets: tuple[str, ...] = ('blocks.*.attn.qkv', 'blocks.*.attn.proj',
                                'blocks.*.mlp.0', 'blocks.*.mlp.3', 'head.1')

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError('lora.rank must be >= 1')
        if self.alpha <= 0:
            raise ConfigError('lora.alpha must be > 0')
        if not self.targets:
            raise ConfigError('lora.targets must name at least one layer pattern')


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with the base layer frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    @property
    def weight(self) -> torch.Tensor:
        """The adapted weight, for a caller that applies slices of it (PatchEmbed)."""
        return self.base.weight + (self.lora_b @ self.lora_a) * self.scale

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def merged(self) -> nn.Linear:
        """The plain linear layer with the update folded in."""
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split('.')
    mod = root
    for p in parts[:-1]:
        mod = getattr(mod, p)
    return mod, parts[-1]


def apply_lora(module: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze ``module`` and wrap its matching linear layers; return their names."""
    cfg.validate()
    for p in module.parameters():
        p.requires_grad_(False)
    names = [n for n, m in module.named_modules()
             if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, t) for t in cfg.targets)]
    if not names:
        linear = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f'lora.targets {list(cfg.targets)} match no linear layer; this '
                          f'encoder has {linear[:12]}')
    for n in names:
        parent, attr = _parent(module, n)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.rank, cfg.alpha))
    return names


def merge_lora(module: nn.Module) -> int:
    """Fold every adapter into its layer (in place); return how many were merged."""
    names = [n for n, m in module.named_modules() if isinstance(m, LoRALinear)]
    for n in names:
        parent, attr = _parent(module, n)
        setattr(parent, attr, getattr(parent, attr).merged())
    return len(names)


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a fine-tune trained in the encoder)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()
            if k.endswith('lora_a') or k.endswith('lora_b')}
