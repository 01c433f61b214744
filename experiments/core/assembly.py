"""What every job shares: data bundle, network space, framework module, trainer, result files."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from nni.nas.evaluator.pytorch import DataLoader, Trainer

from evaluators import FRAMEWORKS
from evaluators.monitors import EvaluationSet, SSLMonitor
from experiments.core.batch_augment import BatchViewAugment, UInt8Images, collate_uint8
from experiments.core.config import Config
from experiments.core.errors import ConfigError
from experiments.core.machine import ddp_processes, thread_policy
from evaluators.views import AugmentSettings
from experiments.core.data import (DATASETS, DataError, ImageSet, MultiViewDataset, SeededSampler, channel_stats,
                                   load_images, normalized)
from search_spaces import SSLNetworkSpace

@dataclass
class DataBundle:
    train: ImageSet
    test: ImageSet
    mean: list
    std: list
    image_size: int
    views: list  # one transform per view
    evaluation: EvaluationSet
    augment: Optional[torch.nn.Module] = None  # data.batched_augment: the views made in the training step

    def loader(self, indices: Optional[torch.Tensor], cfg: Config, shuffle: bool = True,
               labelled: Optional[bool] = None, stream: int = 0) -> DataLoader:
        """Batches of views of the train split (``indices`` of it); with labels for ``uses_labels`` frameworks.

        Order and augmentation come from (seed, stream, epoch) alone, so a resumed run sees the same batches.
        """
        images = self.train.images if indices is None else self.train.images[indices]
        if labelled is None:
            labelled = getattr(FRAMEWORKS[cfg.framework], "uses_labels", False)
        labels = (self.train.labels if indices is None else self.train.labels[indices]) if labelled else None
        check_split_size(cfg, len(images))
        workers = thread_policy(cfg).workers
        if self.augment is not None:  # uint8 batches; the module makes the views on its device
            dataset, extra = UInt8Images(images), {"collate_fn": collate_uint8}
        else:
            dataset, extra = MultiViewDataset(images, self.views, labels), {}
        return DataLoader(dataset, batch_size=cfg.data.batch_size,
                          sampler=SeededSampler(len(images), cfg.seed, stream, shuffle),
                          drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), **extra)


def check_split_size(cfg: Config, images: int) -> None:
    """Refuse a training split that gives no full batch (the loaders drop the last incomplete one)."""
    world = ddp_processes(cfg)  # under DDP each process takes 1/world of the split (Lightning's sampler)
    if images // world < cfg.data.batch_size:
        per_process = f" ({images // world} per process of {world})" if world > 1 else ""
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is larger than a training split of "
                          f"{images} images{per_process}; lower it or use more data")


def augment_settings(cfg: Config, image_size: int) -> AugmentSettings:
    """The config's augmentation with dataset-aware defaults for the fields left null."""
    a = cfg.augment
    tiny = DATASETS[cfg.data.dataset].glyphs
    return AugmentSettings(
        crop_min_scale=a.crop_min_scale if a.crop_min_scale is not None else (0.5 if tiny else 0.2),
        hflip_p=a.hflip_p if a.hflip_p is not None else (0.0 if tiny else 0.5),
        jitter=tuple(a.jitter), jitter_p=a.jitter_p, grayscale_p=a.grayscale_p,
        blur_p=a.blur_p if a.blur_p is not None else (0.5 if image_size >= 64 else 0.0),
        solarize_p=a.solarize_p,
    )


def build_data(cfg: Config) -> DataBundle:
    d = cfg.data
    try:
        train = load_images(d.dataset, "train", d.root, d.train_subset, cfg.seed, d.image_size)
        test = load_images(d.dataset, "test", d.root, d.test_subset, cfg.seed, d.image_size)
    except DataError as err:
        raise ConfigError(f"data: {err}") from None
    mean, std = channel_stats(train.images)
    size = int(train.images.shape[-1])
    framework = FRAMEWORKS[cfg.framework]
    settings = augment_settings(cfg, size)
    views = framework.view_transforms(settings, size, mean, std, options={**framework.defaults, **cfg.framework_options})
    bank = train
    if cfg.evaluation.bank_subset is not None and cfg.evaluation.bank_subset < len(train):
        bank = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
                            [:cfg.evaluation.bank_subset])
    evaluation = EvaluationSet(normalized(bank, mean, std), bank.labels, normalized(test, mean, std),
                               test.labels, num_classes=len(train.classes))
    augment = None
    if d.batched_augment and framework.batched_views:  # a framework that makes its own views keeps them
        augment = BatchViewAugment(settings, size, mean, std, views=len(views))
    return DataBundle(train, test, mean, std, size, views, evaluation, augment)


def build_space(cfg: Config, framework: Optional[str] = None, head_space: Optional[str] = None,
                num_classes: int = 10) -> SSLNetworkSpace:
    """The network space of the config (or of ``framework``/``head_space``): backbone and the framework's heads."""
    m = cfg.model
    heads = FRAMEWORKS[framework or cfg.framework].heads
    return SSLNetworkSpace(heads, head_space or m.head_space, m.backbone, m.backbone_width,
                           3, m.head_width, tuple(m.mlp_widths), tuple(m.mlp_depths),
                           backbone_options=dict(m.backbone_options), num_classes=num_classes)


def build_module(cfg: Config, epochs: int, interleaved: bool, framework: Optional[str] = None,
                 augment: Optional[torch.nn.Module] = None, **strategy_options: Any):
    """The framework's Lightning module.

    ``augment`` (``DataBundle.augment``) makes views from uint8 batches; ``strategy_options``
    are what the search strategy needs of the module (``Strategy.module_options``: no fast
    architecture step). What a strategy adds to a step lives in its own NNI Lightning module.
    """
    name = framework or cfg.framework
    o = cfg.optim
    options: dict[str, Any] = dict(
        lr=o.lr, sgd_momentum=o.momentum, weight_decay=o.weight_decay, optimizer=o.optimizer,
        warmup_epochs=o.warmup_epochs, batch_size=cfg.data.batch_size, max_epochs=epochs,
        fast_arch_step=cfg.search.fast_arch_step, interleaved=interleaved,
        embedding_dim=FRAMEWORKS[name].heads.scaled(cfg.model.head_width).projector_out, batch_augment=augment,
        channels_last=cfg.trainer.channels_last, compile_backbone=cfg.trainer.compile)
    options.update(strategy_options)
    return FRAMEWORKS[name](**options, **cfg.framework_options)


def build_monitor(cfg: Config, data: DataBundle, listeners: Sequence = ()) -> SSLMonitor:
    e = cfg.evaluation
    return SSLMonitor(data.evaluation, e.knn_k, e.knn_temperature, e.monitor_every_n_epochs, listeners)


def build_trainer(cfg: Config, epochs: int, out: Path, callbacks: list, gradient_clip: Optional[float] = None,
                  unused_parameters: bool = False):
    """Lightning's trainer for a job; ``unused_parameters``: a step may leave parameters without gradient
    (a path-sampling strategy), which DDP must be told or it fails at the second step."""
    from pytorch_lightning.callbacks import Checkpoint
    from experiments.core.checkpointing import AtomicCheckpointIO
    from experiments.core.loggers import run_loggers

    t = cfg.trainer
    loggers = run_loggers(t.logger, t.logger_options, out)
    extra = []
    # A live bar only in a terminal: in a captured log its redraws are stray lines, and the
    # epoch printer already writes one plain line per epoch.
    progress_bar = t.progress_bar and sys.stderr.isatty()
    if progress_bar:
        from pytorch_lightning.callbacks import RichProgressBar
        extra.append(RichProgressBar(leave=False))
    strategy = t.strategy
    if unused_parameters and strategy in ("ddp", "ddp_spawn"):
        strategy = f"{strategy}_find_unused_parameters_true"  # Lightning's registered name for the flag
    kwargs: dict[str, Any] = dict(
        max_epochs=epochs, accelerator=t.accelerator, devices=t.devices, strategy=strategy,
        precision=t.precision, callbacks=callbacks + extra, logger=loggers, log_every_n_steps=1,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress_bar, enable_model_summary=False,
        default_root_dir=str(out), num_sanity_val_steps=0, limit_val_batches=0,
    )
    if gradient_clip is not None:
        kwargs["gradient_clip_val"] = gradient_clip
    return Trainer(**kwargs)


def downstream_metrics(cfg: Config, data: DataBundle, network: torch.nn.Module) -> dict:
    """kNN and linear top-1 of the backbone, collapse score of the projector output, on the test split."""
    from evaluators.downstream import collapse_score, extract_features, linear_probe_accuracy

    e, ev = cfg.evaluation, data.evaluation
    bank = extract_features(network.backbone, ev.bank)
    test = extract_features(network.backbone, ev.test)
    from evaluators.downstream import knn_accuracy

    z = extract_features(torch.nn.Sequential(network.backbone, network.projector), ev.test)
    return {
        "knn_top1": knn_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes, e.knn_k, e.knn_temperature),
        "linear_top1": linear_probe_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes,
                                             epochs=e.linear_epochs, lr=e.linear_lr, seed=cfg.seed),
        "collapse": collapse_score(z),
        "chance": 1.0 / ev.num_classes,
    }


def untrained_knn(cfg: Config, data: DataBundle, network: torch.nn.Module) -> float:
    """kNN top-1 of ``network``'s backbone as built, before any training: the baseline a trained network must beat.

    BatchNorm's running statistics are first taken from the bank images (no gradient, no weight
    changed), so the figure is that of the architecture's random features, not of statistics that
    were never measured.
    """
    import math

    from evaluators.downstream import extract_features, knn_accuracy
    from evaluators.subnet import recalibrate_batchnorm

    e, ev, batch = cfg.evaluation, data.evaluation, cfg.data.batch_size
    recalibrate_batchnorm(network.backbone, ev.bank, math.ceil(len(ev.bank) / batch), batch)
    bank, test = extract_features(network.backbone, ev.bank), extract_features(network.backbone, ev.test)
    return knn_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes, e.knn_k, e.knn_temperature)
