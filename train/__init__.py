"""Training for HMAR Studio: tokenizer (``python -m train.tokenizer``) and two-stage HMAR
(``python -m train.hmar``), single process or ``torchrun``/DDP, with exact resume.

Data loading lives in :mod:`train.data`; see ``train/README.md`` for the commands.
"""

from .config import HMARTrainConfig, OptimConfig, RunConfig, TokenizerTrainConfig
from .distributed import DistContext

__all__ = ["DistContext", "HMARTrainConfig", "OptimConfig", "RunConfig", "TokenizerTrainConfig"]
