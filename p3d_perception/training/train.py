# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Training: contrastive point<->text alignment (pretrain) and CoOp prompt tuning (prompt).

Stage ``pretrain`` trains the 3D encoder so each view's embedding lands on its
class's template-averaged text feature: InfoNCE over the training classes' text
features with semantically smoothed targets (neighbouring names share a little
probability, so the encoder learns the text space's geometry rather than a one-hot
code - this is what lets held-out categories be recognised through their names), a
cosine alignment term, and point<->image InfoNCE when the space has an image tower.
Stage ``prompt`` freezes the encoder and tunes only the context vectors (CoOp).

Everything a run needs to be reproduced is written beside the weights: the card
records config, data, seed and command; ``log.csv`` and ``curve.png`` the curves;
``train_state.safetensors`` (atomic) makes ``--resume`` continue mid-run.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from p3d_perception.config import ConfigError, to_dict
from p3d_perception.model.checkpoint import (load_model, load_training_state, save_model,
                                             save_training_state, update_card)
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.factory import P3DModel, create_model
from p3d_perception.model.grouping import prepare_batch
from p3d_perception.model.prompt import PromptLearner
from p3d_perception.training.augment import AugmentConfig
from p3d_perception.training.data import (DataConfig, ViewBatcher, generate_views,
                                          load_views_file, mesh_info, split_categories,
                                          view_arrays)

LOG = logging.getLogger(__name__)

STATE = 'train_state.safetensors'
LOG_CSV = 'log.csv'
CURVE = 'curve.png'


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0


@dataclass
class LossConfig:
    semantic_smoothing: float = 0.1     # share of target mass spread over similar names
    smoothing_temperature: float = 0.05
    align_weight: float = 0.5           # 1 - cos(embedding, own class text feature)
    image_weight: float = 0.5           # point<->image InfoNCE (image-tower spaces)
    image_size: int = 0                 # rendered view size for the image tower (0 = off)


@dataclass
class PromptTrainConfig:
    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 256
    augment_passes: int = 2             # augmented copies of every view to embed
    #: KgCoOp-style pull of each tuned prototype toward its zero-shot (template) feature:
    #: keeps tuned labels comparable with untrained ones in the same vocabulary
    kg_weight: float = 8.0


@dataclass
class TrainConfig:
    name: str = 'p3d_model'
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prompt_tuning: PromptTrainConfig = field(default_factory=PromptTrainConfig)
    seed: int = 0
    device: str = 'auto'
    amp: bool = True                    # mixed precision on CUDA (ignored on CPU)
    num_threads: int = 0                # torch CPU threads (0 = torch default)
    max_steps: int = 0                  # stop early after this many steps (0 = all epochs)
    init_from: str = ''                 # model dir to start from (fine-tuning); same model cfg

    def validate(self) -> None:
        if self.device not in ('auto', 'cpu', 'cuda'):
            raise ConfigError('device must be auto, cpu or cuda')


def pick_device(name: str) -> str:
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        LOG.warning('CUDA requested but not available; training on CPU')
        return 'cpu'
    return name


# ----------------------------------------------------------------------------- losses
def semantic_targets(protos: torch.Tensor, smoothing: float, temperature: float
                     ) -> torch.Tensor:
    """(C, C) soft targets: 1-s on the diagonal, s spread by text similarity elsewhere."""
    c = protos.shape[0]
    sim = protos @ protos.T / temperature
    sim.fill_diagonal_(float('-inf'))
    spread = sim.softmax(dim=-1) if c > 1 else torch.zeros_like(sim)
    return (1 - smoothing) * torch.eye(c, device=protos.device) + smoothing * spread


def alignment_loss(emb: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor,
                   scale: torch.Tensor, targets: torch.Tensor, align_weight: float
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    logits = scale * emb @ protos.T
    ce = -(targets[labels] * logits.log_softmax(dim=-1)).sum(-1).mean()
    align = (1 - (emb * protos[labels]).sum(-1)).mean()
    acc = (logits.argmax(-1) == labels).float().mean()
    return ce + align_weight * align, {'ce': ce.item(), 'align': align.item(),
                                       'acc': acc.item()}


def image_loss(emb: torch.Tensor, img: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between point and image embeddings of the same views."""
    logits = scale * emb @ img.T
    target = torch.arange(len(emb), device=emb.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ----------------------------------------------------------------------------- helpers
@torch.no_grad()
def embed_views(model: P3DModel, points: Sequence[np.ndarray], colors: Sequence,
                batch_size: int = 128, device: str = 'cpu', seed: int = 0) -> torch.Tensor:
    model.eval()
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, len(points), batch_size):
        b = prepare_batch(points[s:s + batch_size], colors[s:s + batch_size],
                          model.cfg.grouping, rng, device)
        out.append(model.encode_points(b).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.space.dim)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def _lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    t = min(1.0, t)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class CsvLog:
    FIELDS = ('stage', 'epoch', 'step', 'lr', 'loss', 'ce', 'align', 'image', 'train_acc',
              'val_top1_seen', 'val_top1_heldout', 'samples_per_s', 'elapsed_s')

    def __init__(self, path: Path, append: bool):
        self.path = path
        if not append or not path.is_file():
            with path.open('w', newline='') as f:
                csv.writer(f).writerow(self.FIELDS)

    def write(self, **row: Any) -> None:
        with self.path.open('a', newline='') as f:
            csv.writer(f).writerow([_fmt(row.get(k, '')) for k in self.FIELDS])


def _fmt(v: Any) -> Any:
    return f'{v:.5g}' if isinstance(v, float) else v


def plot_curves(log_csv: Path, out_png: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(log_csv.open()))
    if not rows:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for stage in sorted({r['stage'] for r in rows}):
        rs = [r for r in rows if r['stage'] == stage]
        steps = [int(r['step']) for r in rs if r['loss']]
        ax[0].plot(steps, [float(r['loss']) for r in rs if r['loss']], label=f'{stage} loss')
        for key in ('val_top1_seen', 'val_top1_heldout', 'val_top1', 'train_acc'):
            pts = [(int(r['step']), float(r[key])) for r in rs if r.get(key)]
            if pts:
                ax[1].plot(*zip(*pts), marker='o', label=f'{stage} {key}')
    ax[0].set_xlabel('step')
    ax[0].set_ylabel('loss')
    ax[0].legend()
    ax[1].set_xlabel('step')
    ax[1].set_ylabel('top-1')
    ax[1].set_ylim(0, 1)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


@dataclass
class Splits:
    vocabulary: list[str]
    train_classes: list[str]
    held_out: list[str]
    train: tuple
    val_seen: tuple
    val_held: tuple
    data_info: dict


def build_splits(cfg: TrainConfig) -> Splits:
    d = cfg.data
    train_cls, held = split_categories(d)
    vocab = train_cls + held
    if d.views:
        views = load_views_file(d.views)
        train = view_arrays(views, train_cls)
        info = {'views': d.views, 'num_views': len(views)}
        val_seen = ([], [], np.zeros(0, np.int64))
        val_held = ([], [], np.zeros(0, np.int64))
    else:
        views = generate_views(train_cls, d.views_per_category, d.seed, **d.view_options())
        train = view_arrays(views, train_cls)
        vs = generate_views(vocab, d.val_views_per_category, d.val_seed, **d.view_options())
        val_seen = view_arrays(vs, train_cls)
        val_held = view_arrays(vs, vocab)
        keep = np.isin(val_held[2], [vocab.index(h) for h in held])
        val_held = ([p for p, k in zip(val_held[0], keep) if k],
                    [c for c, k in zip(val_held[1], keep) if k], val_held[2][keep])
        keep = val_seen[2] >= 0
        val_seen = ([p for p, k in zip(val_seen[0], keep) if k],
                    [c for c, k in zip(val_seen[1], keep) if k], val_seen[2][keep])
        info = {'generator': 'p3d_perception.training.synthetic.generate_object_views',
                'views_per_category': d.views_per_category, 'seed': d.seed,
                'camera': d.camera, 'num_views': len(views), **mesh_info(d, views),
                'val_views_per_category': d.val_views_per_category, 'val_seed': d.val_seed}
    return Splits(vocab, train_cls, held, train, val_seen, val_held, info)


@torch.no_grad()
def quick_eval(model: P3DModel, splits: Splits, device: str,
               use_prompt: bool = False) -> dict[str, float]:
    """Top-1 on seen validation views (train classes) and held-out views (full vocabulary)."""
    out: dict[str, float] = {}
    protos = model.zero_shot_prototypes(splits.vocabulary).to(device)
    if use_prompt:
        protos[:len(splits.train_classes)] = model.prompt_prototypes(splits.train_classes)
    for key, (pts, cols, labels) in (('val_top1_seen', splits.val_seen),
                                     ('val_top1_heldout', splits.val_held)):
        if len(labels) == 0:
            continue
        emb = embed_views(model, pts, cols, device=device).to(device)
        scores = emb @ protos.T
        out[key] = float(topk_correct(scores.cpu(), torch.as_tensor(labels), 1).float().mean())
    return out


# ----------------------------------------------------------------------------- stages
def pretrain(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
             command: str = '') -> Path:
    """Train the encoder from scratch; writes a complete model directory to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg)
    model = create_model(cfg.model)
    if cfg.init_from and not resume:
        init, init_card = load_model(cfg.init_from)
        if to_dict(init.cfg) != to_dict(cfg.model):
            raise ConfigError(f'init_from {cfg.init_from}: its model config differs from '
                              'this config\'s model section; copy it from the model card')
        model.load_state_dict(init.state_dict())
        LOG.info('initialised from %s', cfg.init_from)
    model.to(device)
    image_size = cfg.loss.image_size if model.space.has_image_tower else 0
    model.prompt.ctx.requires_grad_(False)          # the text head is tuned in stage 'prompt'
    if model.prompt.visual is not None and not image_size:
        model.prompt.visual.requires_grad_(False)   # CG3D visual prompts learn with images
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.optim.weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=cfg.optim.lr)
    batcher = ViewBatcher(*splits.train, cfg.model.grouping, cfg.augment,
                          cfg.optim.batch_size, cfg.seed, image_size)
    total = cfg.optim.epochs * len(batcher)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    start_epoch, step, elapsed = 0, 0, 0.0
    state_path = out / STATE
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f'--resume: no {STATE} in {out}')
        info = load_training_state(state_path, model, opt)
        start_epoch, step, elapsed = info['epoch'] + 1, info['step'], info['elapsed_s']
        LOG.info('resumed at epoch %d, step %d', start_epoch, step)
    log = CsvLog(out / LOG_CSV, append=resume)
    protos = model.zero_shot_prototypes(splits.train_classes).to(device)
    targets = semantic_targets(protos, cfg.loss.semantic_smoothing,
                               cfg.loss.smoothing_temperature)
    use_amp = cfg.amp and device == 'cuda'
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and amp_dtype == torch.float16)
    from tqdm import tqdm
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        if step >= total:
            break
        batcher.rng = np.random.default_rng([cfg.seed, epoch])
        model.train()
        t0, seen = time.time(), 0
        sums: dict[str, float] = {}
        bar = tqdm(batcher.batches(), total=len(batcher), desc=f'pretrain {epoch + 1}/'
                   f'{cfg.optim.epochs}', leave=False, mininterval=2.0)
        for batch in bar:
            if step >= total:
                break
            lr = _lr_at(step, total, cfg.optim)
            for g in opt.param_groups:
                g['lr'] = lr
            inputs, labels = batch.inputs.to(device), batch.labels.to(device)
            with torch.autocast('cuda', dtype=amp_dtype, enabled=use_amp):
                emb = model.encode_points(inputs).float()
                loss, parts = alignment_loss(emb, labels, protos, model.scale(), targets,
                                             cfg.loss.align_weight)
                if batch.images is not None and cfg.loss.image_weight > 0:
                    img = model.prompt.encode_images(model.space, batch.images.to(device))
                    li = image_loss(emb, img.float(), model.scale())
                    loss = loss + cfg.loss.image_weight * li
                    parts['image'] = li.item()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += len(labels)
            parts['loss'] = loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(labels)
            bar.set_postfix(loss=f'{parts["loss"]:.3f}', acc=f'{parts["acc"]:.2f}')
        dt = time.time() - t0
        elapsed += dt
        metrics = quick_eval(model, splits, device)
        row = {k: v / max(seen, 1) for k, v in sums.items()}
        log.write(stage='pretrain', epoch=epoch + 1, step=step, lr=lr, loss=row.get('loss'),
                  ce=row.get('ce'), align=row.get('align'), image=row.get('image', ''),
                  train_acc=row.get('acc'), samples_per_s=seen / max(dt, 1e-6),
                  elapsed_s=elapsed, **metrics)
        LOG.info('epoch %d/%d step %d loss %.4f train_acc %.3f %s (%.0f samples/s)',
                 epoch + 1, cfg.optim.epochs, step, row.get('loss', 0), row.get('acc', 0),
                 ' '.join(f'{k} {v:.3f}' for k, v in metrics.items()), seen / max(dt, 1e-6))
        save_training_state(state_path, model, opt,
                            {'epoch': epoch, 'step': step, 'elapsed_s': elapsed})
        plot_curves(out / LOG_CSV, out / CURVE)
    training = {
        'stage': 'pretrain', 'command': command, 'seed': cfg.seed, 'device': device,
        'init_from': cfg.init_from or None,
        'data': splits.data_info, 'train_categories': splits.train_classes,
        'held_out_categories': splits.held_out, 'steps': step,
        'train_time_s': round(elapsed, 1), 'config': to_dict(cfg),
    }
    save_model(model.cpu(), out, vocabulary=splits.vocabulary,
               prompt_labels=[], training=training,
               metrics={f'pretrain_{k}': round(v, 4) for k, v in metrics.items()},
               name=cfg.name)
    state_path.unlink(missing_ok=True)
    return out


def prompt_tune(cfg: TrainConfig, model_dir: str | Path, out_dir: str | Path | None = None,
                *, command: str = '') -> Path:
    """CoOp: learn the context vectors of the label head on a frozen encoder."""
    out = Path(out_dir or model_dir)
    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model, card = load_model(model_dir, device=device)
    splits = build_splits(cfg)
    pc = cfg.prompt_tuning
    rng = np.random.default_rng(cfg.seed + 7)
    from p3d_perception.training.augment import augment_view
    pts, cols, labels = splits.train
    keep = np.flatnonzero(labels >= 0)
    embs, labs = [], []
    for _ in range(max(1, pc.augment_passes)):
        ap, ac = [], []
        for i in keep:
            p, c = augment_view(pts[i], cols[i], cfg.augment, rng)
            ap.append(p)
            ac.append(c)
        embs.append(embed_views(model, ap, ac, device=device, seed=int(rng.integers(1 << 30))))
        labs.append(torch.as_tensor(labels[keep]))
    emb, lab = torch.cat(embs).to(device), torch.cat(labs).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():                   # CoOp starts from the initial context every time
        model.prompt.ctx.copy_(PromptLearner(cfg.model.prompt, model.space).ctx.to(device))
    anchors = model.zero_shot_prototypes(splits.train_classes).to(device)
    model.prompt.ctx.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    opt = torch.optim.AdamW([model.prompt.ctx, model.logit_scale], lr=pc.lr, weight_decay=0.0)
    log = CsvLog(out / LOG_CSV, append=True)
    before = quick_eval(model, splits, device, use_prompt=True)
    from tqdm import trange
    t0 = time.time()
    model.train()
    model.space.eval()
    losses = []
    for step in trange(pc.steps, desc='prompt', leave=False, mininterval=2.0):
        idx = torch.randint(0, len(lab), (min(pc.batch_size, len(lab)),), device=device)
        protos = model.prompt_prototypes(splits.train_classes)
        logits = model.scale() * emb[idx] @ protos.T
        loss = F.cross_entropy(logits, lab[idx])
        if pc.kg_weight:
            loss = loss + pc.kg_weight * (1 - (protos * anchors).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, pc.steps // 10) == 0 or step + 1 == pc.steps:
            acc = float((logits.argmax(-1) == lab[idx]).float().mean())
            log.write(stage='prompt', epoch=0, step=step + 1, lr=pc.lr,
                      loss=float(np.mean(losses[-10:])), train_acc=acc,
                      elapsed_s=time.time() - t0)
    model.eval()
    after = quick_eval(model, splits, device, use_prompt=True)
    LOG.info('prompt tuning: %s -> %s', before, after)
    training = dict(card.get('training') or {})
    training['prompt'] = {'command': command, 'steps': pc.steps, 'lr': pc.lr,
                          'kg_weight': pc.kg_weight,
                          'augment_passes': pc.augment_passes,
                          'train_time_s': round(time.time() - t0, 1)}
    metrics = dict(card.get('metrics') or {})
    metrics.update({f'prompt_{k}': round(v, 4) for k, v in after.items()})
    save_model(model.cpu(), out, vocabulary=card['vocabulary'],
               prompt_labels=splits.train_classes, training=training, metrics=metrics,
               name=card.get('name'))
    plot_curves(out / LOG_CSV, out / CURVE)
    return out


def record_metrics(model_dir: str | Path, metrics: dict[str, Any]) -> None:
    update_card(model_dir, metrics=metrics)


def command_line() -> str:
    """The exact command that is running, for the model card."""
    import shlex
    import sys
    return 'p3d ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
