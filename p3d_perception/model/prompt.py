# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Prompt-tuned label head (CoOp) and CG3D visual prompts, on a frozen text space.

Only a handful of context vectors are learned; the language model stays frozen, so
labels never seen in training still get sensible prototypes from the same text
encoder (zero-shot templates) while trained labels get the tuned ones. The context
starts from real words ("a point cloud of a"), so an untrained head equals the
plain template.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from p3d_perception.model.config import PromptConfig
from p3d_perception.model.text_space import TextSpace


class PromptLearner(nn.Module):
    """Learnable context vectors in front of class-name tokens -> label prototypes."""

    def __init__(self, cfg: PromptConfig, space: TextSpace):
        super().__init__()
        self.cfg = cfg
        ctx = torch.randn(cfg.n_ctx, space.token_width) * 0.02
        if cfg.ctx_init:
            words = space.word_embeddings(cfg.ctx_init)[:cfg.n_ctx]
            ctx[:len(words)] = words
        self.ctx = nn.Parameter(ctx)
        if space.has_image_tower and cfg.visual_prompt_tokens > 0:
            self.visual = nn.Parameter(torch.randn(
                space.vision_layers, cfg.visual_prompt_tokens, space.vision_width) * 0.02)
        else:
            self.visual = None

    def forward(self, space: TextSpace, names: Sequence[str]) -> torch.Tensor:
        """Normalised prototypes (C, D); gradients reach only ``ctx``."""
        return space.encode_prompted(self.ctx, list(names))

    def encode_images(self, space: TextSpace, images: torch.Tensor) -> torch.Tensor:
        """Image-tower features with CG3D deep visual prompt tokens."""
        if not space.has_image_tower:
            raise ValueError(f'text space {space.name} has no image tower')
        return space.encode_image(images, self.visual)
