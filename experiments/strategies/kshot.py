"""K-shot NAS (Su et al., ICML 2021): SPOS first, then K copies of every candidate's weights mixed per path.

Training (``KShotSamplingModule``, NNI's ``RandomSamplingLightningModule`` plus the K-shot
steps): ``spos_epochs`` epochs of plain SPOS, then ``experiments.strategies.kshot_weights.KShotWeights`` wraps
the trained supernet (the copies start as its weights) and every batch runs two steps on
freshly sampled paths: a simplex-net step on a held-out batch (only the simplex-net moves:
its own Adam, gradients taken for its parameters alone) and the weight step on a training
batch (Lightning's automatic optimisation, as SPOS; the code is detached, so only the space's
parameters, copies included, move). With ``k = 1`` the code is the constant 1: the simplex-net
step is skipped and no held-out loader is drawn, so the run is SPOS's, step for step.

Selection is SPOS's evolution, every sub-network scored and exported as its materialised
combination (``derive``), so the scorer, ``search_model.pt`` and ``retrain`` see plain weights.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.spos import EVOLUTION_OPTIONS, check_evolution, evolve

CHECKPOINT_KEY = "kshot"


class KShot(Strategy):
    name = "kshot"
    summary = "SPOS warm-up, then K weight copies per candidate mixed by a simplex-net; evolution over the mixes"
    interleaved = True  # the training module sees a held-out (even) and a training (odd) step per batch
    trains_paths = True
    #: K copies of a LayerChoice's candidates and of a searched width's full-width weights (the paper's channel
    #: dimension); the simplex-net reads the width choices in the path's code like the layer choices
    handles = frozenset({"layer", "width"})
    config_fields = ("backbone_search.trials", "backbone_search.bn_batches", "backbone_search.score_images")
    option_specs = {
        **EVOLUTION_OPTIONS,
        "k": Option(4, "[1, 16]", "the number of weight copies (the paper's K; 1 is SPOS)"),
        "spos_epochs": Option(5, "[0, 10000]", "plain SPOS epochs before the copies are made from its weights"),
        "simplex_hidden": Option(64, "[1, 4096]", "the simplex-net's hidden width"),
        "simplex_lr": Option(1e-3, "(0, 10]", "the simplex-net's Adam learning rate"),
    }

    def check(self, cfg, target: str) -> None:
        if cfg.backbone_search.strategy != self.name:
            return
        check_evolution(target, self.settings(cfg))
        spos_epochs = self.settings(cfg)["spos_epochs"]
        if spos_epochs >= cfg.search.epochs:
            raise ConfigError(f"backbone_search.strategy_options.spos_epochs: must be below search.epochs "
                              f"({cfg.search.epochs}) or K-shot never starts, got {spos_epochs}")

    def module_options(self, ctx: SearchContext) -> dict:
        return {"fast_arch_step": False}  # the simplex-net's gradient flows through the whole backbone

    def build(self, ctx: SearchContext):
        s = self.settings(ctx.cfg)
        return kshot_one_shot(k=s["k"], spos_epochs=s["spos_epochs"], hidden=s["simplex_hidden"], lr=s["simplex_lr"])

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        oneshot = nni_strategy.oneshot_module
        architecture, history = evolve(ctx, nni_strategy.supernet, self.settings(ctx.cfg),
                                       network_of=oneshot.materialize)
        return Selection(architecture, evolution=history)

    def derive(self, nni_strategy, architecture: dict) -> torch.nn.Module:
        return nni_strategy.oneshot_module.materialize(architecture)


def kshot_one_shot(k: int, spos_epochs: int, hidden: int, lr: float):
    """NNI ``RandomOneShot`` whose one-shot module is :class:`KShotSamplingModule` (built on first use)."""
    from nni.nas.strategy import RandomOneShot

    class KShotRandomOneShot(RandomOneShot):
        def configure_oneshot_module(self, training_module):
            return sampling_module_class()(training_module, k=k, spos_epochs=spos_epochs, hidden=hidden, lr=lr)

        def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
            if k == 1:  # nothing to learn on held-out batches: SPOS's loader alone
                return train_dataloader_fn()
            return {"train": train_dataloader_fn(), "val": val_dataloader_fn()}  # Lightning's CombinedLoader

        def val_dataloader(self, train_dataloader_fn, val_dataloader_fn):
            return None

    return KShotRandomOneShot()


@functools.cache
def sampling_module_class() -> type:
    """The Lightning module class, defined on first use: the config imports this registry, and NNI is slow to import."""
    from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule

    from evaluators.distributed import average_gradients
    from experiments.strategies.sampling import distributed, broadcast_from_rank_zero
    from experiments.strategies.kshot_weights import KShotWeights, SimplexNet

    class KShotSamplingModule(RandomSamplingLightningModule):
        """SPOS for ``spos_epochs`` epochs, then the alternating K-shot steps (see the module docstring)."""

        def __init__(self, training_module, *, k: int, spos_epochs: int, hidden: int, lr: float):
            super().__init__(training_module)
            self.k, self.spos_epochs, self.hidden, self.simplex_lr = k, spos_epochs, hidden, lr
            self.kshot: Optional[KShotWeights] = None
            self.simplex_net: Optional[SimplexNet] = None
            self.simplex_optimizer: Optional[torch.optim.Optimizer] = None
            self.simplex_steps = 0

        # --- the copies ---------------------------------------------------------------------
        def make_kshot(self) -> None:
            """Wrap the supernet (its weights become every copy's start) and build the simplex-net.

            The simplex-net is initialised off the training's random stream (a forked generator
            seeded from the run's seed), so the paths and views drawn after the wrap do not depend on K.
            """
            self.kshot = KShotWeights(self.model, self.k)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(torch.initial_seed())  # the CPU generator only
                self.simplex_net = SimplexNet(self.kshot.encoding_dim, self.k, self.hidden).to(self.device)
            self.simplex_optimizer = torch.optim.Adam(self.simplex_net.parameters(), lr=self.simplex_lr)

        def on_train_epoch_start(self):
            if self.kshot is None and self.current_epoch >= self.spos_epochs:
                self.make_kshot()
                for optimizer in self.trainer.optimizers:
                    stack_optimizer_state(optimizer, self.kshot.copies, self.k)
            return super().on_train_epoch_start()

        def training_step(self, batch, batch_idx):
            if self.kshot is None:  # the SPOS warm-up
                train_batch = batch["train"] if isinstance(batch, dict) else batch
                return super().training_step(train_batch, 2 * batch_idx + 1)
            if distributed():  # DDP's reducer knows the weights' pre-wrap shapes: average by hand instead
                self.trainer.strategy.model.require_backward_grad_sync = False
            if self.k > 1:
                self.simplex_step(batch["val"], batch_idx)
            sample = self.resample()
            with torch.no_grad():  # the weight step moves the copies, not the simplex-net
                self.kshot.use_path(sample, self.simplex_net)
            train_batch = batch["train"] if isinstance(batch, dict) else batch
            return self.training_module.training_step(train_batch, 2 * batch_idx + 1)

        def simplex_step(self, held_out_batch, batch_idx: int) -> None:
            """One Adam step of the simplex-net on a held-out batch; no other parameter gets a gradient."""
            sample = self.resample()
            self.kshot.use_path(sample, self.simplex_net)
            loss = self.training_module.training_step(held_out_batch, 2 * batch_idx)
            params = list(self.simplex_net.parameters())
            grads = torch.autograd.grad(loss, params)
            self.simplex_optimizer.zero_grad(set_to_none=True)
            for param, grad in zip(params, grads):
                param.grad = grad
            if distributed():  # every rank's held-out batch counts, as DDP would average them
                average_gradients(params, missing_as_zero=True)
            self.simplex_optimizer.step()
            self.simplex_steps += 1
            self.log("search/simplex_loss", loss.detach())

        def resample(self) -> dict:
            """NNI's draw on every rank (the generators stay in step), rank zero's path trained by all."""
            sample = super().resample()
            if not distributed():
                return sample
            chosen = broadcast_from_rank_zero(sample)
            if chosen != sample:
                for module in self.supernet_modules():
                    module.resample(memo=dict(chosen))
            return chosen

        def on_before_optimizer_step(self, optimizer) -> None:
            """Under DDP in the K-shot phase: the weight step's gradients averaged over the ranks."""
            if self.kshot is not None and distributed():
                average_gradients([p for group in optimizer.param_groups for p in group["params"]],
                                  missing_as_zero=False)

        def materialize(self, architecture: dict) -> torch.nn.Module:
            """The path as a plain network holding its combined weights (``check`` makes sure K-shot started)."""
            return self.kshot.materialize(architecture, self.simplex_net)

        # --- checkpoints: the copies' keys and the simplex-net's optimiser ---------------------
        def on_save_checkpoint(self, checkpoint: dict) -> None:
            if self.kshot is not None:
                checkpoint[CHECKPOINT_KEY] = {"simplex_optimizer": self.simplex_optimizer.state_dict(),
                                              "simplex_steps": self.simplex_steps}

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            """Lightning calls this before loading the state dict: wrap first, so the copies' keys exist."""
            state = checkpoint.get(CHECKPOINT_KEY)
            if state is None:
                return
            if self.kshot is None:
                self.make_kshot()
            self.simplex_optimizer.load_state_dict(state["simplex_optimizer"])
            self.simplex_steps = int(state["simplex_steps"])

    return KShotSamplingModule


def stack_optimizer_state(optimizer: torch.optim.Optimizer, copies: list, k: int) -> None:
    """The weight optimiser's per-parameter state (SGD momentum, Adam moments) repeated onto the K copies.

    The copied parameters keep their identity through the wrap but take the shape ``(K, *shape)``;
    their state keeps the old shape. Each copy continues the SPOS weight's state, as its value does.
    """
    for param in copies:
        state: dict[str, Any] = optimizer.state.get(param, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() == param.dim() - 1 and value.shape == param.shape[1:]:
                state[key] = value.unsqueeze(0).repeat(k, *([1] * value.dim()))
