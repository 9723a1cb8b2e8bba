# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Frozen-backbone 3D encoder (ViT-Lens / Any2Point): a small lens into a frozen language model.

Instead of training a transformer from scratch, 3D patch tokens are fed through the
frozen layers of the text space's own transformer (MiniLM's BERT layers, or
OpenCLIP's text transformer). Only the tokenizer (mini-PointNet), bottleneck
adapters after each frozen layer, a few tokens and the output projection are
trained - about 1-10 % of the parameters - so the pretrained sequence model's
knowledge is reused and the trainable part stays tiny.

Positions follow Any2Point's virtual projection: each patch centre is projected on
a few fixed 1D lines through the unit sphere; the frozen backbone's own 1D position
embeddings are interpolated at those coordinates and averaged, so no new positional
parameters are learned and the backbone sees positions in the form it was trained
on. The frozen layers are re-implemented here from their weights (plain matmuls) so
the whole encoder exports to ONNX like the from-scratch one.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from p3d_perception.model.config import EncoderConfig
from p3d_perception.model.encoder import PatchEmbed
from p3d_perception.model.text_space import TextSpace


def _line_directions(n: int) -> torch.Tensor:
    """n fixed, well-spread unit directions (golden-angle spiral)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1).float()


class Adapter(nn.Module):
    """Bottleneck MLP on a residual branch; zero-initialised so training starts at identity."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class FrozenBertLayer(nn.Module):
    """A post-norm BERT layer rebuilt from a transformers BertLayer's weights."""

    def __init__(self, layer: nn.Module, heads: int, eps: float):
        super().__init__()
        a = layer.attention
        self.q = copy.deepcopy(a.self.query)
        self.k = copy.deepcopy(a.self.key)
        self.v = copy.deepcopy(a.self.value)
        self.o = copy.deepcopy(a.output.dense)
        self.ln1 = copy.deepcopy(a.output.LayerNorm)
        self.fc1 = copy.deepcopy(layer.intermediate.dense)
        self.fc2 = copy.deepcopy(layer.output.dense)
        self.ln2 = copy.deepcopy(layer.output.LayerNorm)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h, d = self.heads, w // self.heads
        q = self.q(x).reshape(b, t, h, d).transpose(1, 2)
        k = self.k(x).reshape(b, t, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, t, h, d).transpose(1, 2)
        att = ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, w)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class FrozenCLIPBlock(nn.Module):
    """A pre-norm open_clip text block rebuilt from its weights (no causal mask: 3D tokens)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln_1 = copy.deepcopy(block.ln_1)
        self.ln_2 = copy.deepcopy(block.ln_2)
        self.in_proj_weight = nn.Parameter(block.attn.in_proj_weight.detach().clone())
        self.in_proj_bias = nn.Parameter(block.attn.in_proj_bias.detach().clone())
        self.out_proj = copy.deepcopy(block.attn.out_proj)
        self.mlp = copy.deepcopy(block.mlp)
        self.ls_1 = copy.deepcopy(getattr(block, 'ls_1', nn.Identity()))
        self.ls_2 = copy.deepcopy(getattr(block, 'ls_2', nn.Identity()))
        self.heads = block.attn.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h, d = self.heads, w // self.heads
        qkv = F.linear(self.ln_1(x), self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        att = ((qkv[0] @ qkv[1].transpose(-2, -1)) * d ** -0.5).softmax(-1)
        y = (att @ qkv[2]).transpose(1, 2).reshape(b, t, w)
        x = x + self.ls_1(self.out_proj(y))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class FrozenLensEncoder(nn.Module):
    """3D tokens through a frozen text transformer with adapters -> text-space embedding."""

    frozen_prefixes = ('backbone.', 'pos_table', 'embed_norm.', 'final_norm.')

    def __init__(self, cfg: EncoderConfig, space: TextSpace):
        super().__init__()
        self.cfg = cfg
        if hasattr(space, 'bert'):
            bert = space.bert
            width = bert.config.hidden_size
            layers = bert.encoder.layer[:cfg.lens_layers]
            self.backbone = nn.ModuleList(
                FrozenBertLayer(la, bert.config.num_attention_heads, bert.config.layer_norm_eps)
                for la in layers)
            pos = bert.embeddings.position_embeddings.weight.detach()[:128]
            self.embed_norm = copy.deepcopy(bert.embeddings.LayerNorm)
            self.final_norm = nn.Identity()
        elif hasattr(space, 'model'):
            m = space.model
            width = m.token_embedding.embedding_dim
            self.backbone = nn.ModuleList(
                FrozenCLIPBlock(b) for b in m.transformer.resblocks[:cfg.lens_layers])
            pos = m.positional_embedding.detach()
            self.embed_norm = nn.Identity()
            self.final_norm = copy.deepcopy(m.ln_final)
        else:
            raise ValueError(f'text space {space.name} has no transformer to use as a lens')
        self.width = width
        self.register_buffer('pos_table', pos.clone().float(), persistent=True)
        self.register_buffer('lines', _line_directions(cfg.num_projection_lines),
                             persistent=False)
        in_ch = 6 if cfg.use_color else 3
        self.patch_embed = PatchEmbed(in_ch, cfg.patch_hidden, width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.scale_embed = nn.Linear(1, width) if cfg.use_scale else None
        self.adapters = nn.ModuleList(Adapter(width, cfg.adapter_dim) for _ in self.backbone)
        self.head = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, space.dim))
        for name, p in self.named_parameters():
            if name.startswith(self.frozen_prefixes):
                p.requires_grad_(False)

    def _positions(self, centers: torch.Tensor) -> torch.Tensor:
        """Any2Point virtual projection: interpolate frozen 1D positions on fixed lines."""
        n = self.pos_table.shape[0]
        t = (centers @ self.lines.T).clamp(-1, 1)              # (B, G, L)
        u = (t + 1) * 0.5 * (n - 2) + 1                        # position 0 is kept for CLS
        lo = u.floor().clamp(0, n - 2)
        frac = (u - lo).unsqueeze(-1)
        lo = lo.long()
        emb = self.pos_table[lo] * (1 - frac) + self.pos_table[lo + 1] * frac   # (B,G,L,W)
        return emb.mean(dim=2)

    def forward(self, patches: torch.Tensor, centers: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
        if not self.cfg.use_color:
            patches = patches[..., :3]
        x = self.patch_embed(patches) + self._positions(centers)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.pos_table[0]
        if self.scale_embed is not None:
            cls = cls + self.scale_embed(scale).unsqueeze(1)
        x = self.embed_norm(torch.cat([cls, x], dim=1))
        for layer, adapter in zip(self.backbone, self.adapters):
            x = adapter(layer(x))
        x = self.final_norm(x)
        feat = torch.cat([x[:, 0], x[:, 1:].mean(dim=1)], dim=-1)
        return F.normalize(self.head(feat), dim=-1)
