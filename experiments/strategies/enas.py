"""ENAS (Pham et al. 2018) through NNI: an RL controller samples paths, rewarded on held-out batches.

The reward is the sampled network's kNN top-1 (or, for a framework whose projector is a
classifier, such as ``supervised``, its accuracy) on a held-out batch, minus NNI's budget
penalty; the derived network is the controller's most probable one, fitted to the budget as for
DARTS. Needs tianshou and gym (quirk 16).

As NNI structures its strategies, the reward step lives in this strategy's own Lightning module
(``EnasModule``, a subclass of NNI's ``EnasLightningModule``), which a subclass of NNI's ``ENAS``
makes; that subclass also tags each batch with its loader (quirk 17).
"""
from __future__ import annotations

from typing import Any

import torch
from nni.nas.oneshot.pytorch._dataloader import ConcatLoader
from nni.nas.oneshot.pytorch.sampling import EnasLightningModule
from nni.nas.strategy import ENAS as NniENAS

from evaluators.options import Option
from experiments import nni_compat
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.budget import most_probable_within_budget

REWARD_BANK_IMAGES = 256  # labelled images the reward's kNN compares against
REWARD_METRIC = "val/reward"


class EnasModule(EnasLightningModule):
    """NNI's ENAS module whose reward is this strategy's: the sampled network on a held-out batch.

    NNI's ENAS asks its training module's ``validation_step`` for the reward (it reads
    ``reward_metric_name`` from what that step logs), so ``reward_step`` is bound there, on the
    framework this module wraps; no other job's framework has a validation step.
    """

    def __init__(self, training_module, *, reward_bank: Any, **kwargs):
        super().__init__(training_module, **kwargs)
        # (images, labels, num_classes, k, temperature): the kNN bank of ``reward``
        self.reward_bank = reward_bank
        training_module.validation_step = self.reward_step

    @torch.no_grad()
    def reward(self, batch) -> torch.Tensor:
        """The sampled network's accuracy on a labelled batch (its last item): a classifier's own, else the
        kNN top-1 of the batch's first view against ``reward_bank``."""
        framework = self.training_module
        x, y = batch[0], batch[-1]
        if framework.heads.classifier:
            return (framework.projector(framework.backbone(x)).argmax(1) == y).float().mean()
        from evaluators.downstream import knn_predict

        images, labels, num_classes, k, temperature = self.reward_bank
        features = framework.backbone(torch.cat([images.to(x.device), x]))
        bank, queries = features[:len(images)], features[len(images):]
        prediction = knn_predict(queries.float().cpu(), bank.float().cpu(), labels.cpu(), num_classes, k, temperature)
        return (prediction == y.cpu()).float().mean()

    def reward_step(self, batch, batch_idx):
        """The framework's ``validation_step`` under ENAS: logs the reward NNI reads."""
        value = self.reward(batch)
        self.log(REWARD_METRIC, value, on_step=True, on_epoch=False, batch_size=len(batch[0]))
        return value


class TaggedBatches:
    """Yields ``(batch, tag)`` for every batch of ``loader`` (quirk 17, see ``TaggedENAS``)."""

    def __init__(self, loader, tag: str):
        self.loader, self.tag = loader, tag

    def __iter__(self):
        for batch in self.loader:
            yield batch, self.tag

    def __len__(self) -> int:
        return len(self.loader)


class TaggedENAS(NniENAS):
    """NNI's ENAS training through ``EnasModule``, each batch tagged with its loader's name.

    Quirk 17: NNI's ENAS on pytorch-lightning 2.x takes every step for a validation step. Its
    ``training_step`` reads a 2-item batch as the legacy ``(batch, mode)`` pair; Lightning 2.x hands
    it the bare batch, and an ``(x, y)`` or two-view batch has two items, so ``mode`` is a tensor and
    every step goes to the reward branch (the weights never train). Tagging each batch gives exactly
    the pair the legacy branch expects.
    """

    def __init__(self, *, reward_bank: Any, **kwargs):
        super().__init__(reward_metric_name=REWARD_METRIC, **kwargs)
        self.reward_bank = reward_bank

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        return ConcatLoader({"train": TaggedBatches(train_dataloader_fn(), "train"),
                             "val": TaggedBatches(val_dataloader_fn(), "val")})

    def configure_oneshot_module(self, training_module) -> EnasModule:
        return EnasModule(training_module, reward_bank=self.reward_bank, batches_per_update=self.batches_per_update,
                          log_prob_every_n_step=self.log_prob_every_n_step, replay_buffer_size=self.replay_buffer_size,
                          reward_metric_name=self.reward_metric_name, policy_fn=self.policy_fn,
                          update_kwargs=self.update_kwargs, warmup_epochs=self.warmup_epochs, penalty=self.penalty)


def budget_penalty(cost, max_flops, max_params, scale: float):
    """NNI's own reward penalty (``SampleProfilerPenalty``) on the worst ratio of a sample's cost to its budget;
    None without a budget."""
    from nni.nas.oneshot.pytorch.profiler import SampleProfilerPenalty
    from nni.nas.profiler import Profiler

    class BudgetRatio(Profiler):
        def __init__(self):  # noqa: D401 - a profiler over the backbone cost
            pass

        def profile(self, sample) -> float:
            c = cost({k: v for k, v in sample.items() if k in cost.labels})
            ratios = [c.flops / max_flops] if max_flops else []
            ratios += [c.params / max_params] if max_params else []
            return max(ratios) if ratios else 0.0

    if (max_flops or max_params) and scale > 0:
        return SampleProfilerPenalty(BudgetRatio(), baseline=1.0, scale=-scale, nonlinear="positive")
    return None


class ENAS(Strategy):
    name = "enas"
    summary = "an RL controller (PPO) samples paths, rewarded by held-out kNN or accuracy (NNI ENAS)"
    handles = frozenset({"layer", "width", "depth"})
    config_fields = ("search.warmup_epochs", "backbone_search.budget_penalty")
    option_specs = {"batches_per_update": Option(10, "[1, 100000]", "rewards per controller update")}
    needs_labels = True
    trains_paths = True

    def check(self, cfg, target: str) -> None:
        missing = nni_compat.missing_enas_dependencies()
        if missing:
            raise ConfigError(f"backbone_search.strategy: enas needs tianshou and gym ({missing}); install them with "
                              f"pip install -r requirements-enas.txt, or use spos")

    def reward_bank(self, ctx: SearchContext) -> tuple:
        scorer, e = ctx.scorer, ctx.cfg.evaluation
        n = min(len(scorer.bank), REWARD_BANK_IMAGES)
        return scorer.bank[:n], scorer.bank_labels[:n], scorer.num_classes, min(e.knn_k, n), e.knn_temperature

    def build(self, ctx: SearchContext):
        b, s = ctx.cfg.backbone_search, ctx.cfg.search
        max_flops, max_params = ctx.budget
        return TaggedENAS(reward_bank=self.reward_bank(ctx),
                          penalty=budget_penalty(ctx.cost, max_flops, max_params, b.budget_penalty),
                          batches_per_update=self.settings(ctx.cfg)["batches_per_update"],
                          warmup_epochs=s.warmup_epochs)

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        probabilities = nni_compat.enas_probabilities(nni_strategy.oneshot_module)
        return Selection(most_probable_within_budget(probabilities, ctx.cost, *ctx.budget, log_fn=ctx.log_fn),
                         probabilities)
