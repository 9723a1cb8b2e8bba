# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Model directories round-trip and refuse missing, corrupt and mismatched models."""

import shutil

import numpy as np
import pytest
import torch
import yaml

from p3d_perception.config import from_dict
from p3d_perception.model.checkpoint import load_model, read_card, save_model
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.factory import create_model
from p3d_perception.model.grouping import prepare_batch
from p3d_perception.recognize import ModelError, Recognizer

TINY = {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
        'encoder': {'width': 32, 'depth': 1, 'heads': 2, 'patch_hidden': 16}}
VOCAB = ['mug', 'bowl', 'hammer']


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(from_dict(ModelConfig, TINY))
    with torch.no_grad():
        model.prompt.ctx.add_(0.01)          # make the prompt head differ from init
    out = tmp_path_factory.mktemp('m') / 'tiny'
    save_model(model, out, vocabulary=VOCAB, prompt_labels=['mug'],
               training={'seed': 0, 'command': 'test'}, metrics={'top1': 0.5})
    return out, model


def _clouds():
    rng = np.random.default_rng(3)
    return [rng.normal(size=(200, 3)).astype(np.float32) * 0.05 for _ in range(3)]


def test_round_trip_identical_embeddings(model_dir):
    out, model = model_dir
    loaded, card = load_model(out)
    assert card['vocabulary'] == VOCAB and card['text_space'] == 'minilm'
    assert card['training']['seed'] == 0 and card['metrics']['top1'] == 0.5
    b = prepare_batch(_clouds(), None, loaded.cfg.grouping)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_points(b), model.eval().encode_points(b))
        torch.testing.assert_close(loaded.prompt.ctx, model.prompt.ctx)
    assert (out / 'model.safetensors').read_bytes()[:8] != b'PK\x03\x04'   # not a pickle zip


def test_missing_model_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match='model not found'):
        Recognizer.from_checkpoint(tmp_path / 'nope')
    (tmp_path / 'half').mkdir()
    with pytest.raises(ModelError, match='no model.safetensors'):
        load_model(tmp_path / 'half')


def test_wrong_text_space_refused(model_dir):
    out, _ = model_dir
    with pytest.raises(ModelError, match='text space'):
        Recognizer.from_checkpoint(out, text_space='openclip:ViT-B-32/openai')


def test_corrupt_weights_refused(model_dir, tmp_path):
    src, _ = model_dir
    bad = tmp_path / 'bad'
    shutil.copytree(src, bad)
    data = bytearray((bad / 'model.safetensors').read_bytes())
    data[-20:] = b'\x00' * 20
    (bad / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(ModelError, match='sha256'):
        load_model(bad)
    (bad / 'model.safetensors').write_bytes(b'garbage')
    with pytest.raises(ModelError, match='safetensors'):
        load_model(bad, verify=False)
    (bad / 'model_card.yaml').write_text(': : not yaml [')
    with pytest.raises(ModelError):
        read_card(bad)


def test_card_architecture_mismatch_refused(model_dir, tmp_path):
    src, _ = model_dir
    bad = tmp_path / 'arch'
    shutil.copytree(src, bad)
    card = yaml.safe_load((bad / 'model_card.yaml').read_text())
    card['model']['encoder']['width'] = 64
    (bad / 'model_card.yaml').write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match='architecture'):
        load_model(bad)


def test_recognizer_uses_prompt_head_for_trained_labels(model_dir):
    out, model = model_dir
    rec = Recognizer.from_checkpoint(out, device='cpu')
    assert rec.vocabulary == VOCAB and rec.text_space == 'minilm' and rec.device == 'cpu'
    with torch.no_grad():
        tuned = model.prompt_prototypes(['mug'])[0]
    torch.testing.assert_close(rec._protos[0], tuned, atol=1e-5, rtol=0)
    torch.testing.assert_close(rec._protos[1], rec._text_protos[1])
    res = rec.classify(_clouds(), top_k=2)
    assert len(res) == 3 and len(res[0].top_labels) == 2
    assert abs(np.linalg.norm(res[0].embedding) - 1) < 1e-5
    assert all(r.label in VOCAB for r in res)
    unk = rec.classify(_clouds(), unknown_threshold=1.01)
    assert all(r.label == 'unknown' for r in unk)
    assert rec.classify([]) == []


def test_learned_label_prototypes_round_trip_and_take_precedence(tmp_path):
    torch.manual_seed(3)
    model = create_model(from_dict(ModelConfig, TINY))
    kettle = torch.nn.functional.normalize(torch.randn(model.space.dim), dim=0)
    model.label_prototypes = {'kettle': kettle}
    mug_example = torch.nn.functional.normalize(torch.randn(model.space.dim), dim=0)
    model.example_cache = {'keys': mug_example[None], 'labels': ['mug'], 'alpha': 50.0,
                           'beta': 5.0}
    out = save_model(model, tmp_path / 'm', vocabulary=['mug', 'kettle'],
                     prompt_labels=['mug'], training={'command': 'test'})
    loaded, card = load_model(out)
    assert card['label_prototypes'] == ['kettle']
    assert card['example_cache']['names'] == ['mug'] and loaded.example_cache['alpha'] == 50
    torch.testing.assert_close(loaded.label_prototypes['kettle'], kettle)
    rec = Recognizer.from_checkpoint(out, device='cpu')
    torch.testing.assert_close(rec._protos[rec.vocabulary.index('kettle')], kettle)
    assert float(rec._protos[rec.vocabulary.index('mug')] @ kettle) < 0.9
    # the cached example decides what sits on it; the prototype decides elsewhere
    probs = rec.label_probs(torch.stack([mug_example, kettle]))
    assert probs.argmax(1).tolist() == [0, 1]
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    rec.set_vocabulary(['kettle', 'bowl'])          # examples outside the vocabulary drop out
    assert rec._cache is None
    # a card that lists other prototypes than the weights hold is refused
    card['label_prototypes'] = ['kettle', 'jar']
    (out / 'model_card.yaml').write_text(yaml.safe_dump(card), encoding='utf-8')
    with pytest.raises(ModelError, match='label_prototypes'):
        load_model(out)
