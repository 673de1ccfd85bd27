"""HMAR Studio engine: configs, pyramid math, tokenizer, transformer, sampler, engines, editing,
pipeline."""

from .checkpoint import CheckpointError
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .editing import EditOptions, EditPreview, EditResult, EditSession, EditSpec, edit_schedule
from .engine import ENGINE_CHOICES, EditModel, Engine
from .fast import FastEngine, FastRunner
from .model import TokenModel
from .official import load_official
from .pipeline import GenerateOutput, Pipeline
from .reference_engine import ReferenceEngine
from .sampler import SampleOutput, ScaleConstraint, ScaleState, sample
from .schedules import default_schedule, schedule_from_steps, validate_schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = [
    "ENGINE_CHOICES",
    "CheckpointError",
    "EditModel",
    "EditOptions",
    "EditPreview",
    "EditResult",
    "EditSession",
    "EditSpec",
    "Engine",
    "FastEngine",
    "FastRunner",
    "GenerateOutput",
    "HMARTransformer",
    "MultiScaleVQTokenizer",
    "Pipeline",
    "ReferenceEngine",
    "SampleOutput",
    "SamplerConfig",
    "ScaleConstraint",
    "ScaleState",
    "TokenModel",
    "TokenizerConfig",
    "TransformerConfig",
    "default_schedule",
    "edit_schedule",
    "load_official",
    "sample",
    "schedule_from_steps",
    "validate_schedule",
]
