"""ReSSL's relational loss (Zheng et al., NeurIPS 2021): match the student's relation to the teacher's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelationalLoss(nn.Module):
    """``-sum_k p_t(k) log p_s(k)``, averaged over the batch.

    The relation of an embedding ``z`` is its distribution of cosine similarities to the
    memory queue, ``p(k) = softmax_k(z . m_k / T)``. The student (strong view, online
    network) uses ``student_temperature``; the teacher (weak view, momentum network, no
    gradient) the lower ``teacher_temperature``, which sharpens its target. ``student`` and
    ``teacher`` are L2-normalised here; ``queue`` rows are already normalised teacher keys.
    """

    def __init__(self, student_temperature: float = 0.1, teacher_temperature: float = 0.04):
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("temperatures must be positive")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        queue = queue.detach()
        student_logits = F.normalize(student, dim=1) @ queue.t() / self.student_temperature
        teacher_logits = F.normalize(teacher.detach(), dim=1) @ queue.t() / self.teacher_temperature
        target = F.softmax(teacher_logits, dim=1)
        return -(target * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
