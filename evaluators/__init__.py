"""SSL frameworks (one per module), downstream evaluators and monitors.

A new framework is one new module and one line in ``FRAMEWORKS``.
"""
from evaluators.byol import BYOL
from evaluators.moco import MoCo
from evaluators.ressl import ReSSL
from evaluators.simclr import SimCLR
from evaluators.simsiam import SimSiam
from evaluators.supervised import Supervised
from evaluators.wcl import WCL

FRAMEWORKS = {cls.name: cls for cls in (SimSiam, SimCLR, MoCo, BYOL, ReSSL, WCL, Supervised)}

__all__ = ["FRAMEWORKS", "SimSiam", "SimCLR", "MoCo", "BYOL", "ReSSL", "WCL", "Supervised"]
