# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Typed configs of the 3D encoder, its grouping and the prompt head.

Kept in one small module (like timm's model configs) so a checkpoint's model card
can record the exact architecture as plain YAML and rebuild it with
``p3d_perception.config.from_dict`` without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p3d_perception.config import ConfigError

ENCODER_KINDS = ('pointvit', 'frozen_lens')
LABEL_TEXTS = ('names', 'descriptions')


@dataclass
class GroupingConfig:
    """How a cluster becomes patches, outside the exported network."""

    num_points: int = 512      # points resampled per cluster
    num_groups: int = 32       # farthest-point centres
    group_size: int = 16       # neighbours per centre (kNN)

    def validate(self) -> None:
        if self.num_points < 8:
            raise ConfigError('grouping.num_points must be >= 8')
        if not 1 <= self.num_groups <= self.num_points:
            raise ConfigError('grouping.num_groups must be in [1, num_points]')
        if not 1 <= self.group_size <= self.num_points:
            raise ConfigError('grouping.group_size must be in [1, num_points]')


@dataclass
class EncoderConfig:
    """The network after grouping: patch embedding, transformer, projection."""

    kind: str = 'pointvit'     # pointvit (trained from scratch) | frozen_lens (ViT-Lens/Any2Point)
    use_color: bool = True     # rgb channels in the patch embedding (zeros when absent)
    use_scale: bool = True     # metric size (log radius) as an extra token
    width: int = 192
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    patch_hidden: int = 64     # mini-PointNet hidden width
    dropout: float = 0.0
    adapter_dim: int = 32      # frozen_lens: bottleneck adapter width
    lens_layers: int = 6       # frozen_lens: how many frozen text-transformer layers to use
    num_projection_lines: int = 4   # frozen_lens: virtual 1D projections for positions

    def validate(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ConfigError(f'encoder.kind must be one of {ENCODER_KINDS}, got {self.kind!r}')
        if self.width % self.heads:
            raise ConfigError('encoder.width must be divisible by encoder.heads')
        if self.depth < 1 or self.width < 8:
            raise ConfigError('encoder.depth must be >= 1 and encoder.width >= 8')


@dataclass
class PromptConfig:
    """CoOp context of the text head and CG3D visual prompts of the image tower."""

    n_ctx: int = 5
    ctx_init: str = 'a point cloud of a'   # initial context words ('' = random)
    visual_prompt_tokens: int = 5          # per layer (deep VPT), image tower only

    def validate(self) -> None:
        if self.n_ctx < 1:
            raise ConfigError('prompt.n_ctx must be >= 1')


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; written into every model card."""

    text_space: str = 'minilm'
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    init_temperature: float = 0.07
    #: what a label's zero-shot prototype is made of: 'names' (the name in templates) or
    #: 'descriptions' (its lines in model/descriptions.yaml; names where it has none).
    #: Part of the model: the encoder is aligned to one or the other.
    label_text: str = 'names'

    def validate(self) -> None:
        if self.label_text not in LABEL_TEXTS:
            raise ConfigError(f'model.label_text must be one of {LABEL_TEXTS}, '
                              f'got {self.label_text!r}')
        if not self.text_space:
            raise ConfigError('model.text_space must be set (minilm or openclip:ARCH/WEIGHTS)')
        if self.init_temperature <= 0:
            raise ConfigError('model.init_temperature must be > 0')
