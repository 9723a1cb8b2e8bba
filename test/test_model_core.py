# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Grouping, encoder, text spaces and the prompt learner with real (tiny) components."""

import numpy as np
import pytest
import torch

from p3d_perception.config import ConfigError, from_dict
from p3d_perception.model.config import EncoderConfig, GroupingConfig, ModelConfig
from p3d_perception.model.encoder import PointViT
from p3d_perception.model.factory import create_model
from p3d_perception.model.grouping import (InputError, _fps_torch, farthest_point_sample,
                                           normalize_clouds, prepare_batch)
from p3d_perception.model.text_space import TEMPLATES, load_text_space

TINY = {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
        'encoder': {'width': 32, 'depth': 1, 'heads': 2, 'patch_hidden': 16}}


def _clouds(n, seed=0):
    rng = np.random.default_rng(seed)
    pts = [rng.normal(size=(int(rng.integers(20, 400)), 3)).astype(np.float32) * 0.05 + 1.0
           for _ in range(n)]
    cols = [rng.integers(0, 255, p.shape, dtype=np.uint8) for p in pts]
    return pts, cols


@pytest.fixture(scope='module')
def minilm():
    return load_text_space('minilm')


def test_normalize_unit_sphere_and_scale():
    pts, cols = _clouds(5)
    xyz, rgb, logr = normalize_clouds(pts, cols, 128)
    assert xyz.shape == (5, 128, 3) and rgb.shape == (5, 128, 3)
    r = np.linalg.norm(xyz, axis=2).max(axis=1)
    np.testing.assert_allclose(r, 1.0, rtol=1e-5)
    np.testing.assert_allclose(xyz.mean(axis=1), 0, atol=0.2)
    assert rgb.max() <= 1.0 and logr.shape == (5,)
    # metric size is kept as a separate feature
    _, _, logr2 = normalize_clouds([p * 10 for p in pts], cols, 128)
    np.testing.assert_allclose(logr2 - logr, 1.0, atol=0.05)


def test_fps_picks_distinct_spread_points():
    xyz = torch.from_numpy(normalize_clouds(_clouds(3)[0], None, 128)[0])
    idx = farthest_point_sample(xyz, 16)
    assert idx.shape == (3, 16)
    for row in idx:
        assert len(set(row.tolist())) == 16
    # the 2 farthest-apart points of a line are picked first
    line = torch.linspace(-1, 1, 50)[None, :, None].repeat(1, 1, 3)
    first = farthest_point_sample(line, 2)[0].tolist()
    assert sorted(first) == [0, 49]


def test_fps_cpu_path_picks_the_same_points_as_the_torch_loop():
    # the CPU path is a compiled loop for speed; training on a GPU runs the torch loop, and a
    # model must see the same patches either way (ties included: rounded coordinates)
    rng = np.random.default_rng(3)
    for t in range(40):
        xyz = rng.normal(size=(int(rng.integers(1, 12)), 256, 3)).astype(np.float32)
        if t % 2:
            xyz = np.round(xyz, 1)
        tx = torch.from_numpy(xyz)
        assert torch.equal(farthest_point_sample(tx, 24), _fps_torch(tx, 24))


def test_prepare_batch_shapes_and_bad_input():
    cfg = GroupingConfig(num_points=64, num_groups=8, group_size=8)
    pts, cols = _clouds(4)
    b = prepare_batch(pts, [cols[0], None, cols[2], None], cfg)
    assert b.patches.shape == (4, 8, 8, 6) and b.centers.shape == (4, 8, 3)
    assert b.scale.shape == (4, 1)
    assert float(b.patches[1, ..., 3:].abs().max()) == 0.0     # no colour -> zeros
    with pytest.raises(InputError, match='cluster 1'):
        prepare_batch([pts[0], np.zeros((0, 3))], None, cfg)
    with pytest.raises(InputError, match='shape'):
        prepare_batch([np.zeros((10, 2))], None, cfg)
    with pytest.raises(InputError, match='no finite'):
        prepare_batch([np.full((10, 3), np.nan)], None, cfg)
    with pytest.raises(ConfigError):
        from_dict(GroupingConfig, {'num_groups': 100, 'num_points': 50})


def test_encoder_output_normalised_and_color_optional():
    enc = PointViT(EncoderConfig(width=32, depth=1, heads=2, patch_hidden=16), 24).eval()
    b = prepare_batch(*_clouds(3), GroupingConfig(64, 8, 8))
    out = enc(b.patches, b.centers, b.scale)
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    enc2 = PointViT(EncoderConfig(width=32, depth=1, heads=2, patch_hidden=16,
                                  use_color=False), 24)
    assert enc2.patch_embed.first[0].in_features == 3


def test_minilm_space_semantics_and_cache(minilm):
    assert minilm.dim == 384
    f = minilm.encode(['a mug', 'a cup', 'a hammer'])
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    assert float(f[0] @ f[1]) > float(f[0] @ f[2])
    again = minilm.encode(['a mug'])
    assert torch.equal(again[0], f[0])
    p = minilm.prototypes(['mug', 'hammer'])
    assert p.shape == (2, 384) and len(TEMPLATES) >= 10


def test_description_prototypes_follow_the_lexicon(minilm):
    from p3d_perception.model.descriptions import load_descriptions
    from p3d_perception.training.synthetic import CATEGORIES
    lexicon = load_descriptions()
    missing = [c for c in CATEGORIES if c not in lexicon]
    assert not missing, f'catalogue labels without descriptions: {missing}'
    assert all(len(lines) >= 2 for lines in lexicon.values())
    protos = minilm.prototypes(['kettle', 'Stapler', 'no such thing'], descriptions=lexicon)
    lines = minilm.encode(list(lexicon['kettle']))
    torch.testing.assert_close(protos[0], torch.nn.functional.normalize(lines.mean(0), dim=0))
    names = minilm.prototypes(['kettle', 'no such thing'])
    assert float(protos[0] @ names[0]) < 0.99                      # the lines, not the name
    torch.testing.assert_close(protos[2], names[1])                # no entry: name templates
    # a model aligned to descriptions uses them; the default model uses names
    cfg = from_dict(ModelConfig, {**TINY, 'label_text': 'descriptions'})
    model = create_model(cfg, minilm)
    torch.testing.assert_close(model.zero_shot_prototypes(['kettle'])[0], protos[0])
    plain = create_model(from_dict(ModelConfig, TINY), minilm)
    torch.testing.assert_close(plain.zero_shot_prototypes(['kettle'])[0], names[0])
    with pytest.raises(ConfigError, match='label_text'):
        from_dict(ModelConfig, {**TINY, 'label_text': 'captions'})


def test_bad_lexicon_file_is_refused(tmp_path):
    from p3d_perception.model.descriptions import load_descriptions
    bad = tmp_path / 'lex.yaml'
    bad.write_text('kettle: [a kettle, 3]\n')
    with pytest.raises(ValueError, match='kettle'):
        load_descriptions(bad)


def test_fast_inference_tower_matches_fp32(minilm):
    texts = ['a photo of a coffee mug.', 'something to drink from']
    batch = minilm.tokenizer(texts, padding=True, return_tensors='pt')
    with torch.no_grad():
        ref = minilm._pool(minilm.bert(**batch).last_hidden_state, batch['attention_mask'])
    fast = minilm._encode(texts)
    assert fast.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(fast, ref)
    assert float(cos.min()) > 0.999
    assert not any(k.startswith('_bf16') for k in minilm.state_dict())  # not saved
    plain = minilm.query_feature('  a coffee   mug ')
    torch.testing.assert_close(plain.norm(), torch.tensor(1.0))
    torch.testing.assert_close(plain, minilm.encode(['a coffee mug'])[0])


def test_prompt_learner_starts_at_template_and_only_ctx_gets_gradient(minilm):
    cfg = from_dict(ModelConfig, TINY)
    model = create_model(cfg, minilm)
    names = ['mug', 'bowl', 'hammer']
    protos = model.prompt_prototypes(names)
    plain = minilm.encode([f'a point cloud of a {n}.' for n in names])
    # encode() may run a bf16 copy of the tower (cosine 0.9999); a wrong start is ~0.98
    torch.testing.assert_close(protos.detach(), plain, atol=3e-3, rtol=0)
    assert float((protos.detach() * plain).sum(dim=1).min()) > 0.9995
    # a few steps toward swapped targets move the prototypes; only ctx changes
    target = plain[[1, 2, 0]]
    opt = torch.optim.Adam([model.prompt.ctx], lr=0.05)
    frozen_before = {k: v.clone() for k, v in minilm.state_dict().items()}
    losses = []
    for _ in range(5):
        loss = (1 - (model.prompt_prototypes(names) * target).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        assert model.prompt.ctx.grad is not None and model.prompt.ctx.grad.abs().sum() > 0
        assert all(p.grad is None for p in minilm.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.prompt_prototypes(names).detach()
    assert float((after - protos.detach()).abs().max()) > 1e-3
    for k, v in minilm.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k


def test_openclip_random_tiny_end_to_end():
    space = load_text_space('openclip:p3d-tiny/random')
    assert space.has_image_tower and space.dim == 64
    cfg = from_dict(ModelConfig, dict(TINY, text_space='openclip:p3d-tiny/random'))
    model = create_model(cfg)
    names = ['mug', 'bowl']
    protos = model.prompt_prototypes(names)
    plain = space.encode([f'a point cloud of a {n}.' for n in names])
    # encode() may run a bf16 copy of the tower (cosine 0.9999); a wrong start is ~0.98
    torch.testing.assert_close(protos.detach(), plain, atol=3e-3, rtol=0)
    assert float((protos.detach() * plain).sum(dim=1).min()) > 0.9995
    img = torch.rand(2, 3, 32, 32)
    f = model.prompt.encode_images(space, img)
    assert f.shape == (2, 64)
    f.sum().backward()
    assert model.prompt.visual.grad is not None
    emb = model.encode_points(prepare_batch(*_clouds(2), cfg.grouping))
    assert emb.shape == (2, 64)


def test_openclip_missing_weights_say_what_to_do():
    from p3d_perception.model.errors import ModelError
    with pytest.raises(ModelError, match='not found'):
        load_text_space('openclip:p3d-tiny//nonexistent/weights.safetensors')
    with pytest.raises(ModelError, match='unknown text space'):
        load_text_space('word2vec')


def test_patch_embed_equals_the_concatenated_local_global_layer():
    # forward splits the [local, global] layer's weight so the pooled half is applied
    # once per patch; it must be the PointNet it replaces, to float rounding
    from p3d_perception.model.encoder import PatchEmbed
    torch.manual_seed(0)
    pe = PatchEmbed(6, 16, 24).eval()
    x = torch.randn(3, 5, 7, 6)
    with torch.no_grad():
        f = pe.first(x)
        g = f.max(dim=2, keepdim=True).values.expand_as(f)
        ref = pe.second(torch.cat([f, g], dim=-1)).max(dim=2).values
        out = pe(x)
    assert out.shape == (3, 5, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
