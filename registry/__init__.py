"""The bottom floor of zoo: the contracts every model family builds on, the plugin hooks, and the plugin manager.

Nothing here imports from ``zoo`` above it, so a plugin can depend on these names alone:

* contracts, one per capability (``contracts.py``: Encoder, Classifier, TextEncoder, Autoencoder, Flow,
  Detector, Pipeline; ``diffusion.py``: Denoiser, Sampler, Conditioner), and :data:`INTERFACES`, which an
  entry's ``interface`` names;
* noise schedules (``schedules.py``) and the helpers samplers share (``report_step``, ``ode_slope``,
  ``implied_noise``, ``per_sample``);
* what a plugin registers (``entry.py``: ModelEntry and its Components; ``hookspecs.py``: the hooks, Command);
* code imported on first use (``lazy.py``: ``lazy``, so that listing imports no model);
* typed, bounded config fields (``config.py``: ``bound``, ``check_fields``);
* the errors every floor raises (``errors.py``).
"""
from .contracts import (INTERFACES, Autoencoder, Classifier, Detections, Detector, DetectorInput, Encoder, Flow,
                        Module, Pipeline, TextEncoder, TextFeatures, check_contract)
from .diffusion import (PREDICTIONS, Conditioner, DenoiseFn, Denoiser, FunctionSampler, NoiseSampler, PlanFn,
                        Prediction, Sampler, SamplingPlan, StepInfo, implied_noise, ode_slope, report_step, sampler)
from .config import bound, check_fields
from .entry import DIFFUSERS_WEIGHTS, MODEL_WEIGHTS, Component, ModelEntry, Renames
from .errors import (ArgumentTypeError, ConfigError, ContractError, DuplicateNameError, InvalidInputError,
                     NonFiniteError)
from .hookspecs import Command, hookimpl, hookspec
from .lazy import Lazy, lazy, resolve
from .manager import Registry, build_registry
from .schedules import DiscreteVPSchedule, EDMSchedule, FlowSchedule, NoiseSchedule, karras_sigmas
from .tensors import check_image_batch, per_sample

__all__ = [
    "DIFFUSERS_WEIGHTS", "INTERFACES", "MODEL_WEIGHTS", "PREDICTIONS", "ArgumentTypeError", "Autoencoder",
    "Classifier", "Command", "Component", "Conditioner", "ConfigError", "ContractError", "DenoiseFn", "Denoiser",
    "Detections", "Detector", "DetectorInput", "DiscreteVPSchedule", "DuplicateNameError", "EDMSchedule", "Encoder",
    "Flow", "FlowSchedule", "FunctionSampler", "InvalidInputError", "Lazy", "ModelEntry", "Module", "NoiseSampler",
    "NoiseSchedule", "NonFiniteError", "Pipeline", "PlanFn", "Prediction", "Registry", "Renames", "Sampler",
    "SamplingPlan", "StepInfo", "TextEncoder", "TextFeatures", "bound", "build_registry", "check_contract",
    "check_fields", "check_image_batch", "hookimpl", "hookspec", "implied_noise", "karras_sigmas", "lazy",
    "ode_slope", "per_sample", "report_step", "resolve", "sampler",
]
