"""SSL losses, one per module: each an ``nn.Module`` returning a scalar."""
from evaluators.losses.info_nce import QueueInfoNCELoss
from evaluators.losses.knn_multicrop import KNNMultiCropLoss
from evaluators.losses.negative_cosine import NegativeCosineSimilarity
from evaluators.losses.ntxent import NTXentLoss
from evaluators.losses.relational import RelationalLoss
from evaluators.losses.supcon import SupConLoss
from evaluators.losses.weak_label import WeakLabelSupConLoss, weak_labels

__all__ = ["KNNMultiCropLoss", "NegativeCosineSimilarity", "NTXentLoss", "QueueInfoNCELoss", "RelationalLoss",
           "SupConLoss", "WeakLabelSupConLoss", "weak_labels"]
