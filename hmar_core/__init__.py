"""HMAR Studio engine: configs, pyramid math, tokenizer, transformer, sampler, editing, pipeline."""

from .checkpoint import CheckpointError
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .editing import EditOptions, EditSpec, edit_schedule
from .editing_ops import EditPreview, EditResult
from .editing_ops import edit as edit_image
from .editing_outpaint import outpaint as outpaint_image
from .editing_session import EditSession
from .fast import FastPipeline, FastRunner
from .model import TokenModel
from .pipeline import GenerateOutput, Pipeline, load_official
from .sampler import SampleOutput, ScaleConstraint, ScaleState, sample
from .schedules import default_schedule, schedule_from_steps, validate_schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = [
    "CheckpointError",
    "EditOptions",
    "EditPreview",
    "EditResult",
    "EditSession",
    "EditSpec",
    "FastPipeline",
    "FastRunner",
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
    "edit_image",
    "edit_schedule",
    "load_official",
    "outpaint_image",
    "sample",
    "schedule_from_steps",
    "validate_schedule",
]
