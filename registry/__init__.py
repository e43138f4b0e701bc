"""The contracts every zoo model family builds on, and the plugin manager that finds the families."""
from .contracts import (PREDICTIONS, DenoiseFn, Denoiser, Detections, Detector, Encoder, FunctionSampler, NoiseSampler,
                        Prediction, Sampler, StepInfo, check_image_batch, sampler)
from .entry import ModelEntry
from .hookspecs import hookimpl, hookspec
from .manager import DuplicateNameError, Registry, build_registry
from .schedules import DiscreteVPSchedule, EDMSchedule, FlowSchedule, NoiseSchedule, karras_sigmas

__all__ = [
    "PREDICTIONS", "DenoiseFn", "Denoiser", "Detections", "Detector", "DiscreteVPSchedule", "DuplicateNameError",
    "EDMSchedule", "Encoder", "FlowSchedule", "FunctionSampler", "ModelEntry", "NoiseSampler", "NoiseSchedule", "Prediction",
    "Registry", "Sampler", "StepInfo", "build_registry", "check_image_batch", "hookimpl", "hookspec",
    "karras_sigmas", "sampler",
]
