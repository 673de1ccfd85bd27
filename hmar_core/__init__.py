"""HMAR Studio engine: configs, pyramid math, tokenizer, transformer, sampler, pipeline."""

from .checkpoint import CheckpointError
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .model import TokenModel
from .pipeline import GenerateOutput, Pipeline, load_official
from .sampler import SampleOutput, ScaleConstraint, ScaleState, sample
from .schedules import default_schedule, schedule_from_steps, validate_schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = [
    "CheckpointError",
    "GenerateOutput",
    "HMARTransformer",
    "MultiScaleVQTokenizer",
    "Pipeline",
    "SampleOutput",
    "SamplerConfig",
    "ScaleConstraint",
    "ScaleState",
    "TokenModel",
    "TokenizerConfig",
    "TransformerConfig",
    "default_schedule",
    "load_official",
    "sample",
    "schedule_from_steps",
    "validate_schedule",
]
