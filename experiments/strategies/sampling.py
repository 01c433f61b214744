"""One training path per step, the same on every rank: the NNI module of the sampling strategies' own draws.

SPOS over distinct networks and MCT-NAS choose the path themselves instead of NNI's uniform
draw. Under DDP every rank must train the same path in a step (their gradients are averaged):
rank zero's draw is broadcast; the other ranks draw too, so that a sampler whose state follows
its draws (MCT-NAS's tree) stays the same on every rank.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
from nni.nas.strategy import RandomOneShot, RegularizedEvolution

from experiments.strategies.distinct import distinct_architectures

TREE_CHECKPOINT_KEY = "mctnas_tree"  # MCT-NAS's tree in a Lightning checkpoint


def distributed() -> bool:
    """A process group of more than one rank is running (Lightning DDP)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def broadcast_from_rank_zero(value: Any) -> Any:
    """Rank zero's ``value`` on every rank (any picklable object); itself outside DDP."""
    if not distributed():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over the ranks (on the tensor's device, as NCCL needs); itself outside DDP."""
    value = value.detach().float().reshape(())
    if not distributed():
        return float(value)
    total = value.clone()
    torch.distributed.all_reduce(total)
    return float(total) / torch.distributed.get_world_size()


class PresetPathModule(RandomSamplingLightningModule):
    """NNI's SPOS module whose training path comes from ``draw()`` (``{label: value}``), not NNI's draw.

    Labels ``draw`` leaves out (a searched head) are still drawn by NNI. Validation keeps NNI's
    uniform draw: it must not advance a sampler whose state decides the training paths.
    """

    def __init__(self, training_module, draw: Callable[[], dict]):
        super().__init__(training_module)
        self.draw = draw

    def preset(self, architecture: Mapping[str, Any]) -> dict:
        """Set every mixed layer to ``architecture`` (and NNI's draw for the rest); returns the sample."""
        sample = dict(architecture)
        for module in self.supernet_modules():
            sample.update(module.resample(memo=sample))
        return sample

    def training_step(self, batch, batch_idx):
        self.preset(broadcast_from_rank_zero(self.draw()))
        return self.training_module.training_step(batch, batch_idx)


class PresetPathOneShot(RandomOneShot):
    """``RandomOneShot`` with its Lightning module made by ``make_module(training_module)``."""

    def __init__(self, make_module: Callable[[Any], RandomSamplingLightningModule]):
        super().__init__()
        self.make_module = make_module

    def configure_oneshot_module(self, training_module) -> RandomSamplingLightningModule:
        return self.make_module(training_module)


def distinct_spos(space: str) -> PresetPathOneShot:
    """SPOS over the distinct networks of the backbone space ``space``: each step one of them, drawn uniformly
    by numpy's global generator.

    numpy's global generator is the one NNI's own draw uses (quirk 24): ``seed_everything``
    seeds it and every checkpoint saves it, so the draws resume exactly.
    """
    import numpy as np

    architectures = distinct_architectures(space)

    def draw() -> dict:
        return architectures[int(np.random.randint(len(architectures)))]

    return PresetPathOneShot(lambda training_module: PresetPathModule(training_module, draw))


class CyclicPathModule(PresetPathModule):
    """ViTAS's module: ``draw()``'s path, its weights sliced as ``sides`` says. Validation takes the left.

    ``both`` (the released trainer's BCNet side scheme): the left and the right slices of the path run
    in the same step, their outputs summed before the one loss; ``alternate``: the left on even global
    steps, the right on odd ones; ``left``: the left always (prefix sharing).
    """

    SIDE_RULES = ("both", "alternate", "left")

    def __init__(self, training_module, draw: Callable[[], dict], sides: str):
        super().__init__(training_module, draw)
        if sides not in self.SIDE_RULES:
            raise ValueError(f"sides must be one of {self.SIDE_RULES}, got {sides!r}")
        self.sides = sides

    def side(self) -> str:
        from experiments.strategies.vitas_slicing import SIDES

        return SIDES[int(self.global_step) % 2] if self.sides == "alternate" else SIDES[0]

    def training_step(self, batch, batch_idx):
        from experiments.strategies.vitas_slicing import both_sides_summed, set_channel_side

        if self.sides != "both":
            set_channel_side(self.model, self.side())
            return super().training_step(batch, batch_idx)
        with both_sides_summed(self.model):
            return super().training_step(batch, batch_idx)

    def validation_step(self, *args: Any, **kwargs: Any):
        from experiments.strategies.vitas_slicing import set_channel_side

        set_channel_side(self.model, "left")
        return super().validation_step(*args, **kwargs)


class TreeSamplingModule(PresetPathModule):
    """MCT-NAS's module: the path from the tree each step, the step's reward backed up after it.

    The tree is made at the start of training, when the steps per epoch are known
    (``make(steps_per_epoch, state)``), from the checkpoint's state on a resume; it is saved in
    every checkpoint under ``TREE_CHECKPOINT_KEY``.
    """

    def __init__(self, training_module, make: Callable[[int, Any], Any]):
        super().__init__(training_module, draw=lambda: {})
        self.make = make
        self.shared = None
        self._saved_state = None

    def on_train_start(self):
        if self.shared is None:
            self.shared = self.make(int(self.trainer.num_training_batches), self._saved_state)
        return super().on_train_start()

    def training_step(self, batch, batch_idx):
        path = self.shared.draw()
        self.preset(self.shared.architecture(path))
        loss = self.training_module.training_step(batch, batch_idx)
        reward = self.shared.back_up(path, loss["loss"] if isinstance(loss, Mapping) else loss)
        if reward is not None:
            self.log("search/mctnas_reward", reward)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.shared is not None:
            checkpoint[TREE_CHECKPOINT_KEY] = self.shared.tree.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._saved_state = checkpoint.get(TREE_CHECKPOINT_KEY)
        self.shared = None


class SeededEvolution(RegularizedEvolution):
    """NNI's regularized evolution whose first "random" individuals are given ones (BCNet's lowest-loss widths)."""

    def __init__(self, seeds: Sequence[Mapping[str, Any]] = (), **kwargs):
        super().__init__(**kwargs)
        self.seeds = [dict(s) for s in seeds]

    def random(self):
        if not self.seeds:
            return super().random()
        self._individual_counter += 1
        return self.model_space.freeze(self.seeds.pop(0))
