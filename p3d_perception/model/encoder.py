# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The 3D encoder: patches -> tokens -> transformer -> an embedding in the text space.

Small composable modules (mini-PointNet patch embedding, pre-norm blocks with plain
matmul attention, projection head) so the whole network is a dense tensor program
that exports to ONNX unchanged and stays fast on a 2-core CPU. Grouping happens
before this module (see ``grouping.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p3d_perception.model.config import EncoderConfig


class PatchEmbed(nn.Module):
    """Mini-PointNet over every patch: shared MLP, max-pool, local+global MLP, max-pool."""

    def __init__(self, in_ch: int, hidden: int, width: int):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(in_ch, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                   nn.Linear(hidden, 2 * hidden))
        self.second = nn.Sequential(nn.Linear(4 * hidden, 2 * hidden),
                                    nn.LayerNorm(2 * hidden), nn.GELU(),
                                    nn.Linear(2 * hidden, width))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:   # (B, G, K, C) -> (B, G, W)
        f = self.first(patches)
        g = f.max(dim=2, keepdim=True).values
        # the local+global layer reads [f, g] with g the same for all K points of a patch:
        # W [f; g] = W_f f + W_g g, so W_g g is computed once per patch, not per point
        # (half of this layer's work and no (B, G, K, 4 hidden) concatenation)
        lin, c = self.second[0], f.shape[-1]
        x = F.linear(f, lin.weight[:, :c]) + F.linear(g, lin.weight[:, c:], lin.bias)
        for layer in self.second[1:]:
            x = layer(x)
        return x.max(dim=2).values


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (w // self.heads) ** -0.5
        att = self.drop(att.softmax(dim=-1))
        out = (att @ v).transpose(1, 2).reshape(b, t, w)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PointViT(nn.Module):
    """Trained-from-scratch point transformer (Point-BERT/ULIP style) into the text space."""

    def __init__(self, cfg: EncoderConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        in_ch = 6 if cfg.use_color else 3
        self.patch_embed = PatchEmbed(in_ch, cfg.patch_hidden, w)
        self.pos_embed = nn.Sequential(nn.Linear(3, cfg.patch_hidden), nn.GELU(),
                                       nn.Linear(cfg.patch_hidden, w))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.scale_embed = nn.Linear(1, w) if cfg.use_scale else None
        self.blocks = nn.ModuleList(
            [Block(w, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(w)
        self.head = nn.Sequential(nn.LayerNorm(2 * w), nn.Linear(2 * w, embed_dim))

    def tokens(self, patches: torch.Tensor, centers: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
        if not self.cfg.use_color:
            patches = patches[..., :3]
        x = self.patch_embed(patches) + self.pos_embed(centers)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.cls_pos
        if self.scale_embed is not None:
            cls = cls + self.scale_embed(scale).unsqueeze(1)
        return torch.cat([cls, x], dim=1)

    def forward(self, patches: torch.Tensor, centers: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
        """(B,G,K,6), (B,G,3), (B,1) -> L2-normalised (B, D)."""
        x = self.tokens(patches, centers, scale)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        feat = torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)
        return F.normalize(self.head(feat), dim=-1)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters()
               if p.requires_grad or not trainable_only)
