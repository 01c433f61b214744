"""The Lightning plumbing every SSL framework shares; a framework adds only its loss.

The network (backbone, projector, predictor, optional momentum copies) is NNI's model
space, handed over by NNI through ``set_model``. Under DARTS-family strategies NNI calls
``training_step`` twice per batch (even index: architecture step on a held-out batch;
odd: weight step), so per-step state (momentum update, queue push) changes only in the
weight step, and the architecture step can skip the backbone's backward entirely.

The framework is the search's objective and nothing more: what a strategy adds to a step
(an architecture penalty, a reward, a step over several sampled paths) lives in that
strategy's own NNI Lightning module (``experiments/strategies/``), which calls
``step_views`` and ``step_loss`` when it computes the loss itself.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Optional, Sequence

import torch
from nni.nas.evaluator.pytorch import LightningModule
from torch import nn

from evaluators.distributed import gather
from evaluators.options import Option, option_problems
from evaluators.views import AugmentSettings, ssl_view
from search_spaces.heads import HeadSpec


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameters only (not alphas)."""
    for (name, p_online), p_target in zip(online.named_parameters(), target.parameters()):
        if "_arch_alpha" in name:
            continue
        p_target.mul_(momentum).add_(p_online.detach(), alpha=1.0 - momentum)


class SSLFramework(LightningModule):
    """Shared base: optimiser and schedule, views, the weight-step state (momentum, step count).

    A framework declares, in its own module: ``name``; ``option_specs`` (its options, their
    defaults and ranges); ``heads`` (its head sizes, NASiam layout and branches, which the
    network space builds); ``view_transforms`` when it trains on other views than two of the
    config's recipe; and its loss in ``ssl_loss``.
    """

    name = "base"
    #: framework-specific options: name -> Option (default and range); the config validates against these
    option_specs: dict[str, Option] = {}
    #: the defaults of ``option_specs`` (set for each subclass)
    defaults: dict[str, Any] = {}
    #: what the network space builds for this framework
    heads: Optional[HeadSpec] = None
    #: its batches carry labels
    uses_labels = False
    #: the lowest value its loss can reach (a reward that divides by the loss shifts it above this)
    loss_floor = 0.0
    #: its views can be made from uint8 batches in the training step (``data.batched_augment``)
    batched_views = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.defaults = {key: spec.default for key, spec in cls.option_specs.items()}

    @classmethod
    def option_problems(cls, options: dict) -> list[tuple[str, str]]:
        """``(key, what is wrong)`` for every option that is unknown or out of its range."""
        return option_problems(cls.option_specs, options)

    @classmethod
    def view_sides(cls, size: int, options: Optional[dict] = None) -> tuple[int, ...]:
        """The sides of the views one ``size`` px image gives (a space built for one image size takes no other)."""
        return (size,)

    @classmethod
    def view_transforms(cls, settings: AugmentSettings, size: int, mean, std, options: Optional[dict] = None):
        """The views one image gives: two of the config's recipe (SimSiam, SimCLR, MoCo, BYOL)."""
        return [ssl_view(settings, size, mean, std), ssl_view(settings, size, mean, std)]

    def __init__(self, *, lr: float = 0.06, sgd_momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_size: int = 256, max_epochs: int = 100, warmup_epochs: int = 0,
                 optimizer: str = "sgd", fast_arch_step: bool = True,
                 interleaved: bool = False, embedding_dim: int = 128, batch_augment: Optional[nn.Module] = None,
                 channels_last: bool = False, compile_backbone: bool = False, **options: Any):
        super().__init__()
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no option(s) {sorted(unknown)}; it takes {sorted(self.defaults)}")
        self.options = {**self.defaults, **options}
        self.lr, self.sgd_momentum, self.weight_decay = lr, sgd_momentum, weight_decay
        self.batch_size, self.max_epochs, self.lr_warmup_epochs = batch_size, max_epochs, warmup_epochs
        self.optimizer_name = optimizer
        self.fast_arch_step = fast_arch_step
        self.interleaved = interleaved
        self.embedding_dim = embedding_dim  # the projector's output width (queues are sized by it)
        self.weight_steps = 0  # counts weight steps, the unit of momentum and queue updates
        # Speed (experiments.core.batch_augment, NHWC, torch.compile): no effect on what is computed.
        self.batch_augment = batch_augment  # uint8 batch -> views, on the batch's device
        self._augment_generator: Optional[torch.Generator] = None
        self.channels_last = channels_last
        self.compile_backbone = compile_backbone

    def set_model(self, model) -> None:
        """NNI hands over the (mutated) network here; lay out and compile its backbones once."""
        super().set_model(model)
        backbones = [m for m in (getattr(model, "backbone", None), getattr(model, "momentum_backbone", None))
                     if m is not None]
        for backbone in backbones:
            if self.channels_last:
                backbone.to(memory_format=torch.channels_last)
            if self.compile_backbone:
                backbone.compile()

    # --- the network -------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    @property
    def projector(self) -> nn.Module:
        return self.model.projector

    @property
    def predictor(self) -> nn.Module:
        return self.model.predictor

    def encode(self, x: torch.Tensor, arch_step: bool) -> torch.Tensor:
        """Backbone features; in a fast architecture step they carry no gradient (heads only)."""
        if arch_step and self.fast_arch_step:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def embed(self, x: torch.Tensor, arch_step: bool = False) -> torch.Tensor:
        """The projector output ``z`` (what the collapse monitor watches)."""
        return self.projector(self.encode(x, arch_step))

    @torch.no_grad()
    def momentum_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.momentum_projector(self.model.momentum_backbone(x))

    def momentum_value(self, base: float) -> float:
        """EMA coefficient rising from ``base`` to 1 on a cosine over training (BYOL)."""
        progress = min(1.0, self.current_epoch_progress())
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def current_epoch_progress(self) -> float:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not trainer.max_epochs:
            return 0.0
        batches = max(1, int(trainer.num_training_batches or 1))
        return (trainer.current_epoch + self._batch_in_epoch / batches) / trainer.max_epochs

    def momentum_step(self, base: float, schedule: bool) -> None:
        m = self.momentum_value(base) if schedule else base
        for online, target in self.model.momentum_pairs():
            update_momentum(online, target, m)

    # --- the framework's part ----------------------------------------------------------------
    def ssl_loss(self, views: Sequence[torch.Tensor], arch_step: bool) -> torch.Tensor:
        """The SSL loss of one batch of views. In a weight step, also update per-step state."""
        raise NotImplementedError

    def before_weight_step(self) -> None:
        """Per-weight-step state change before the loss (momentum update)."""

    # --- Lightning -----------------------------------------------------------------------------
    def make_views(self, batch, position: int = 0, arch_step: bool = False) -> list[torch.Tensor]:
        """The batch's views: a tuple of views, or a uint8 batch augmented here (``data.batched_augment``).

        The augmentation draws follow from (seed, rank, epoch, position in the epoch, step kind)
        alone, like the data order, so a resumed run makes the same views as an uninterrupted one,
        and a strategy that interleaves other steps (DARTS, K-shot) sees the weight batches' views
        that SPOS sees.
        """
        if self.batch_augment is not None and isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8:
            if self._augment_generator is None or self._augment_generator.device != batch.device:
                self._augment_generator = torch.Generator(device=batch.device)
            # one stream per rank: seed_everything gives every DDP rank the same initial seed
            epoch = self.trainer.current_epoch if self._trainer is not None else 0
            seed = hash((torch.initial_seed(), self.global_rank, epoch, position, arch_step)) % (2 ** 63)
            views = self.batch_augment(batch, self._augment_generator.manual_seed(seed))
        elif isinstance(batch, torch.Tensor):
            raise RuntimeError("a uint8 batch (data.batched_augment) needs the module built with "
                               "build_module(..., augment=data.augment)")
        else:
            views = list(batch)
        if self.channels_last:  # images only: a labelled batch (supervised) also carries its labels
            views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
        return views

    def is_architecture_step(self, batch_idx: int) -> bool:
        """Quirk 2 (docs/nni.md): under DARTS-family strategies NNI calls ``training_step`` twice per
        batch, the architecture step (on a held-out batch) at the even index."""
        return self.interleaved and batch_idx % 2 == 0

    def training_step(self, batch, batch_idx):
        arch_step = self.is_architecture_step(batch_idx)
        views = self.step_views(batch, batch_idx, arch_step)
        return self.step_loss(self.ssl_loss(views, arch_step), arch_step)

    def step_views(self, batch, batch_idx: int, arch_step: bool) -> list[torch.Tensor]:
        """The step's views; before a weight step's loss, its state change (momentum update)."""
        self._batch_in_epoch = batch_idx // 2 if self.interleaved else batch_idx
        views = self.make_views(batch, self._batch_in_epoch, arch_step)
        if not arch_step:
            self.before_weight_step()
        return views

    def step_loss(self, loss: torch.Tensor, arch_step: bool) -> torch.Tensor:
        """The step's loss, logged; a weight step is counted (the unit of momentum and queue updates)."""
        if arch_step:
            self.log("search/arch_loss", loss.detach(), prog_bar=False)
        else:
            self.weight_steps += 1
            self.log("train/ssl_loss", loss.detach(), prog_bar=True)
        return loss

    _queue_frozen = False

    @contextlib.contextmanager
    def queue_frozen(self):
        """Forward passes of a weight step after its first (another side, a probed placement): no queue push."""
        self._queue_frozen = True
        try:
            yield
        finally:
            self._queue_frozen = False

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        world = self.trainer.world_size if self._trainer is not None else 1  # DDP: batch_size is per process
        lr = self.lr * self.batch_size * world / 256  # the linear scaling rule of SimSiam and MoCo
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=self.sgd_momentum, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {self.optimizer_name!r}")
        warmup, total = self.lr_warmup_epochs, max(1, self.max_epochs)

        def factor(epoch: int) -> float:  # linear warm-up, then cosine to zero, per epoch
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))

        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor)}

    _batch_in_epoch = 0

    def on_save_checkpoint(self, checkpoint):
        checkpoint["weight_steps"] = self.weight_steps

    def on_load_checkpoint(self, checkpoint):
        self.weight_steps = int(checkpoint.get("weight_steps", 0))


class KeyQueue:
    """A ring buffer of past L2-normalised keys, for frameworks built on ``SSLFramework``
    (MoCo's negatives, ReSSL's relation anchors); pushed once per weight step by the caller.

    Under DDP every rank pushes the keys of all ranks, in rank order (as MoCo's and ReSSL's
    own code do): the queue holds ``world`` times more recent keys and stays the same on
    every rank."""

    def register_queue(self, size: int, dim: int) -> None:
        self.register_buffer("queue", torch.nn.functional.normalize(torch.randn(int(size), dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries with every rank's ``keys``, newest last (a collective under DDP)."""
        if getattr(self, "_queue_frozen", False):
            return
        keys = torch.nn.functional.normalize(gather(keys), dim=1)
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
