"""ENAS (Pham et al. 2018) through NNI: an RL controller samples paths, rewarded on held-out batches.

The reward is the sampled network's kNN top-1 (or, for ``supervised``, its accuracy) on a
held-out batch, minus NNI's budget penalty; the derived network is the controller's most
probable one, fitted to the budget as for DARTS. Needs tianshou and gym (quirk 16).
"""
from __future__ import annotations

from evaluators.options import Option
from experiments import nni_compat
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.budget import most_probable_within_budget

REWARD_BANK_IMAGES = 256  # labelled images the reward's kNN compares against


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

    def module_options(self, ctx: SearchContext) -> dict:
        scorer, e = ctx.scorer, ctx.cfg.evaluation
        n = min(len(scorer.bank), REWARD_BANK_IMAGES)
        return {"reward_bank": (scorer.bank[:n], scorer.bank_labels[:n], scorer.num_classes, min(e.knn_k, n),
                                e.knn_temperature)}

    def build(self, ctx: SearchContext):
        b, s = ctx.cfg.backbone_search, ctx.cfg.search
        max_flops, max_params = ctx.budget
        return nni_compat.tagged_enas(ctx.cost, max_flops, max_params, b.budget_penalty,
                                      batches_per_update=self.settings(ctx.cfg)["batches_per_update"],
                                      warmup_epochs=s.warmup_epochs)

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        probabilities = nni_compat.enas_probabilities(nni_strategy.oneshot_module)
        return Selection(most_probable_within_budget(probabilities, ctx.cost, *ctx.budget, log_fn=ctx.log_fn),
                         probabilities)
