"""SSL losses, one per module: each an ``nn.Module`` returning a scalar."""
from evaluators.losses.info_nce import QueueInfoNCELoss
from evaluators.losses.negative_cosine import NegativeCosineSimilarity
from evaluators.losses.ntxent import NTXentLoss

__all__ = ["NegativeCosineSimilarity", "NTXentLoss", "QueueInfoNCELoss"]
