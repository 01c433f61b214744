"""What every job shares: data bundle, network space, framework module, trainer, result files."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from experiments import nni_compat  # noqa: F401  (filters NNI's import warning)

import torch
from nni.nas.evaluator.pytorch import DataLoader, Trainer

from evaluators import FRAMEWORKS
from evaluators.monitors import EvaluationSet, SSLMonitor
from experiments.batch_augment import BatchViewAugment, UInt8Images, collate_uint8
from experiments.config import Config, ConfigError
from experiments.data import (AugmentSettings, DataError, ImageSet, MultiViewDataset, SeededSampler, channel_stats,
                              load_images, normalized, ssl_view)
from search_spaces import SSLNetworkSpace
from search_spaces.layouts import head_dims

FORMAT_VERSION = 1


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
        if len(images) < cfg.data.batch_size:
            raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is larger than a training split of "
                              f"{len(images)} images; lower it or use more data")
        workers = cfg.data.num_workers
        if self.augment is not None:  # uint8 batches; the module makes the views on its device
            dataset, extra = UInt8Images(images), {"collate_fn": collate_uint8}
        else:
            dataset, extra = MultiViewDataset(images, self.views, labels), {}
        return DataLoader(dataset, batch_size=cfg.data.batch_size,
                          sampler=SeededSampler(len(images), cfg.seed, stream, shuffle),
                          drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), **extra)


def augment_settings(cfg: Config, image_size: int) -> AugmentSettings:
    """The config's augmentation with dataset-aware defaults for the fields left null."""
    a = cfg.augment
    tiny = cfg.data.dataset == "digits"
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
    if hasattr(framework, "view_transforms"):  # a framework's own views (ReSSL weak/strong, WCL multi-crop)
        views = framework.view_transforms(settings, size, mean, std,
                                          options={**framework.defaults, **cfg.framework_options})
    else:
        views = [ssl_view(settings, size, mean, std), ssl_view(settings, size, mean, std)]
    bank = train
    if cfg.evaluation.bank_subset is not None and cfg.evaluation.bank_subset < len(train):
        bank = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
                            [:cfg.evaluation.bank_subset])
    evaluation = EvaluationSet(normalized(bank, mean, std), bank.labels, normalized(test, mean, std),
                               test.labels, num_classes=len(train.classes))
    augment = None
    if d.batched_augment:
        if hasattr(framework, "view_transforms"):
            raise ConfigError(f"data.batched_augment: {cfg.framework} makes its own views; set it to false")
        augment = BatchViewAugment(settings, size, mean, std, views=len(views))
    return DataBundle(train, test, mean, std, size, views, evaluation, augment)


def build_space(cfg: Config, framework: Optional[str] = None, head_space: Optional[str] = None,
                num_classes: int = 10) -> SSLNetworkSpace:
    m = cfg.model
    return SSLNetworkSpace(framework or cfg.framework, head_space or m.head_space, m.backbone, m.backbone_width,
                           3, m.head_width, tuple(m.mlp_widths), tuple(m.mlp_depths),
                           backbone_options=dict(m.backbone_options), num_classes=num_classes)


def build_module(cfg: Config, epochs: int, interleaved: bool, framework: Optional[str] = None,
                 augment: Optional[torch.nn.Module] = None):
    """The framework's Lightning module; ``augment`` (``DataBundle.augment``) makes views from uint8 batches."""
    name = framework or cfg.framework
    o = cfg.optim
    return FRAMEWORKS[name](
        lr=o.lr, sgd_momentum=o.momentum, weight_decay=o.weight_decay, optimizer=o.optimizer,
        warmup_epochs=o.warmup_epochs, batch_size=cfg.data.batch_size, max_epochs=epochs,
        param_free_penalty=cfg.search.param_free_penalty if interleaved else 0.0,
        fast_arch_step=cfg.search.fast_arch_step, interleaved=interleaved,
        embedding_dim=head_dims(name, cfg.model.head_width).projector_out, batch_augment=augment,
        channels_last=cfg.trainer.channels_last, compile_backbone=cfg.trainer.compile, **cfg.framework_options)


def build_monitor(cfg: Config, data: DataBundle, listeners: Sequence = ()) -> SSLMonitor:
    e = cfg.evaluation
    return SSLMonitor(data.evaluation, e.knn_k, e.knn_temperature, e.monitor_every_n_epochs, listeners)


def build_trainer(cfg: Config, epochs: int, out: Path, callbacks: list, gradient_clip: Optional[float] = None):
    from pytorch_lightning.callbacks import Checkpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from experiments.checkpointing import AtomicCheckpointIO

    t = cfg.trainer
    loggers = [CSVLogger(str(out), name="logs", version="")]
    try:
        loggers.append(TensorBoardLogger(str(out), name="tensorboard", version=""))
    except ModuleNotFoundError:  # tensorboard is optional
        pass
    extra = []
    if t.progress_bar:
        from pytorch_lightning.callbacks import RichProgressBar
        extra.append(RichProgressBar(leave=True))
    kwargs: dict[str, Any] = dict(
        max_epochs=epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=t.precision, callbacks=callbacks + extra, logger=loggers, log_every_n_steps=1,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress_bar, enable_model_summary=False,
        default_root_dir=str(out), num_sanity_val_steps=0, limit_val_batches=0,
    )
    if gradient_clip is not None:
        kwargs["gradient_clip_val"] = gradient_clip
    return Trainer(**kwargs)


def versions() -> dict:
    import nni
    import pytorch_lightning
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "nni": nni.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_count": os.cpu_count()}


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file renamed into place: readers never see half a file."""
    from experiments.checkpointing import FILE_MODE

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically (see ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_model_atomic(path: Path, payload: dict) -> None:
    """``torch.save`` atomically and durably (``checkpointing.atomic_torch_save``)."""
    from experiments.checkpointing import atomic_torch_save

    atomic_torch_save(payload, path)


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
