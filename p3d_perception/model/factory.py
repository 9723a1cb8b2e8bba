# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Model definition glue: config + text space -> P3DModel (open_clip's factory split).

The model owns only what is trained (encoder, prompt context, temperature); the
frozen text space is attached by reference, never saved in our checkpoints, and is
rebuilt from the name in the model card.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from p3d_perception.model.config import ModelConfig
from p3d_perception.model.descriptions import label_key, load_descriptions
from p3d_perception.model.encoder import PointViT
from p3d_perception.model.grouping import PreparedBatch
from p3d_perception.model.prompt import PromptLearner
from p3d_perception.model.text_space import TextSpace, group_means, load_text_space


def build_encoder(cfg: ModelConfig, space: TextSpace) -> nn.Module:
    if cfg.encoder.kind == 'pointvit':
        return PointViT(cfg.encoder, space.dim)
    from p3d_perception.model.lens import FrozenLensEncoder
    return FrozenLensEncoder(cfg.encoder, space)


class P3DModel(nn.Module):
    """3D encoder + prompt head + learned temperature, aligned to ``space``."""

    def __init__(self, cfg: ModelConfig, space: TextSpace):
        super().__init__()
        self.cfg = cfg
        self._space = [space]          # a list keeps it out of state_dict / parameters()
        self.encoder = build_encoder(cfg, space)
        self.prompt = PromptLearner(cfg.prompt, space)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        #: label -> learned prototype (few-shot labels from a fine-tune); these take
        #: precedence over the prompt head and are saved beside the weights
        self.label_prototypes: dict[str, torch.Tensor] = {}
        #: labelled example embeddings (Tip-Adapter cache) from a fine-tune, or None:
        #: {'keys': (N, D), 'labels': list of N names, 'alpha': float, 'beta': float}
        self.example_cache: dict | None = None
        #: the user's own description lines (label -> lines), over the bundled lexicon
        self.extra_descriptions: dict[str, tuple[str, ...]] = {}

    @property
    def space(self) -> TextSpace:
        return self._space[0]

    def encode_points(self, batch: PreparedBatch) -> torch.Tensor:
        return self.encoder(batch.patches, batch.centers, batch.scale)

    def prompt_prototypes(self, names: Sequence[str]) -> torch.Tensor:
        """Prompt-head prototypes: the context before each name, or before each of its lines.

        A model aligned to descriptions tunes its context in front of the same lines its
        zero-shot prototypes average, so tuned and untuned labels stay comparable.
        """
        lexicon = self.descriptions
        if not lexicon:
            return self.prompt(self.space, names)
        groups = [list(lexicon.get(label_key(n)) or [n]) for n in names]
        return group_means(self.prompt(self.space, [line for g in groups for line in g]), groups)

    @property
    def descriptions(self) -> Mapping[str, Sequence[str]] | None:
        """Label -> description lines, when this model was aligned to descriptions."""
        if self.cfg.label_text != 'descriptions':
            return None
        return {**load_descriptions(), **self.extra_descriptions}

    def zero_shot_prototypes(self, names: Sequence[str]) -> torch.Tensor:
        """Text prototypes of ``names`` the way this model was aligned (names or descriptions)."""
        return self.space.prototypes(names, descriptions=self.descriptions).to(
            self.logit_scale.device)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def saved_state(self) -> dict[str, torch.Tensor]:
        """Trainable state only (frozen backbone copies are rebuilt from the text space)."""
        skip = getattr(self.encoder, 'frozen_prefixes', ())
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not any(k.startswith('encoder.' + p) for p in skip)}


def create_model(cfg: ModelConfig, space: TextSpace | None = None) -> P3DModel:
    space = space if space is not None else load_text_space(cfg.text_space)
    if space.name != cfg.text_space:
        raise ValueError(f'config text space {cfg.text_space} != given {space.name}')
    return P3DModel(cfg, space)
