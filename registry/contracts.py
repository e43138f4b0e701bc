"""One small contract per capability: what a model of each kind must implement, and what it then gets for free.

Each contract is an abstract class with an abstract method or two and concrete helpers written once over them,
and states its tensor contract (shapes, dtypes, value ranges), so that code written against the contract (a
CLI command, a sampler, a zero-shot routine, a pipeline slot) works with every family without knowing which one
it holds. The diffusion contracts (Denoiser, Sampler, Conditioner) live in ``registry.diffusion``.

A model entry's ``interface`` names the contract its built object implements (:data:`INTERFACES`);
``zoo.create`` checks it (:func:`check_contract`).

Conventions used throughout:

* images enter models as float tensors ``(N, C, H, W)``, normalised as the checkpoint expects (each model's
  ``preprocess`` makes them from paths, PIL images or tensors); images leave generators and decoders as
  float ``(N, C, H, W)`` in ``[0, 1]``;
* every tensor a model returns is on the model's device, in the model's dtype unless stated.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .diffusion import Conditioner, Denoiser, Sampler
from .errors import ContractError
from .tensors import check_image_batch
from .errors import InvalidInputError


class Module(nn.Module):
    """An ``nn.Module`` that knows where it lives: :attr:`device` and :attr:`dtype` of its first floating
    parameter or buffer (float32 on the CPU for a module without any)."""

    def _first_tensor(self) -> Tensor | None:
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t for t in tensors if t.is_floating_point()), None)

    @property
    def device(self) -> torch.device:
        t = self._first_tensor()
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        t = self._first_tensor()
        return t.dtype if t is not None else torch.float32


# -- images in ---------------------------------------------------------------------------------------------------


class Encoder(Module, ABC):
    """Maps images to feature vectors.

    ``preprocess`` turns paths, PIL images, uint8 or float ``[0, 1]`` tensors into the float ``(N, 3, H, W)``
    batch the network expects (resized and normalised as the checkpoint's own pipeline does, at
    ``image_size``), on the model's device and in its dtype. ``encode`` returns pooled features ``(N, D)``;
    families that can also return token features ``(N, L, D)`` or per-stage maps do so on request.
    """

    #: (H, W) the encoder expects after preprocessing.
    image_size: tuple[int, int]
    #: the entry name, for messages (set by the family's builder).
    name: str = ""

    @abstractmethod
    def preprocess(self, images: Any) -> Tensor:
        """PIL images, paths, uint8 ``(N, 3, H, W)`` / ``(H, W, 3)`` or float ``[0, 1]`` tensors -> model input."""

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, D)`` pooled features, the model's dtype."""

    def model_input(self, x: Tensor, *, channels: int = 3) -> Tensor:
        """The rule every Encoder applies to a batch before its network sees it.

        ``x`` must be a float ``(N, channels, H, W)`` batch at :attr:`image_size` (what ``preprocess`` returns);
        anything else is a ValueError (TypeError for a non-float or non-tensor input) naming the expected shape.
        A valid batch is moved to the model's device and cast to its dtype, so a float32 CPU batch works on a
        bfloat16 or CUDA model.
        """
        h, w = self.image_size
        check_image_batch(x, channels=channels, size=self.image_size, what=f"{self.name or type(self).__name__} input",
                          fix=f"expected a float (N, {channels}, {h}, {w}) batch, as .preprocess(images) returns")
        return x.to(device=self.device, dtype=self.dtype)


class Classifier(Encoder):
    """An Encoder with a classification head: ``forward`` gives logits over :attr:`labels`."""

    #: class names, in the order of the logits (the checkpoint's own ``id2label``, ImageNet's, or ids).
    labels: list[str]

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, len(labels))`` logits."""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @torch.inference_mode()
    def classify(self, images: Any, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Images -> per image the ``top_k`` (label, probability) pairs, most likely first."""
        probs = self(self.preprocess(images)).float().softmax(-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(self.labels[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]


# -- text in -----------------------------------------------------------------------------------------------------


@dataclass
class TextFeatures:
    """What a text encoder returns for a batch of N texts of L tokens.

    ``states``: ``(N, L, D)`` per-token hidden states of the layer asked for; ``pooled``: ``(N, E)`` the text
    embedding (the projection of the pooled token, from the final layer whatever layer ``states`` come from, as
    SD3 reads CLIP); ``mask``: ``(N, L)`` bool, True on tokens of the text (its end token included), False on
    padding. A model that attends to its padding anyway (SigLIP, T5 in SD3) still marks it here.
    """

    states: Tensor
    pooled: Tensor
    mask: Tensor


class TextEncoder(Module, ABC):
    """Maps text to per-token states and a pooled embedding, with the checkpoint's own tokenizer.

    ``layer`` numbers hidden states as transformers' ``output_hidden_states`` does: 0 is the token embeddings,
    ``i`` the output of block ``i``, negative counts from the end (-1: the last block's output, -2: the
    penultimate, SD3's CLIP input), all before the final norm; ``layer=None`` gives the final states, after it
    (transformers' ``last_hidden_state``).
    """

    #: tokens per text after padding or truncation.
    context_length: int
    #: ids run 0..vocab_size-1; None where the encoder does not say (then ids are not range-checked).
    vocab_size: int | None = None

    @abstractmethod
    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Strings -> ``(N, context_length)`` int64 token ids (padded and truncated as the checkpoint expects)."""

    @abstractmethod
    def encode_tokens(self, ids: Tensor, *, layer: int | None = None) -> TextFeatures:
        """``(N, L)`` int64 token ids -> :class:`TextFeatures` (states of ``layer``, pooled embedding, mask)."""

    def token_ids(self, text: str | Sequence[str] | Tensor) -> Tensor:
        """Strings (tokenized) or ``(N, L)`` int64 ids (checked), on the model's device."""
        ids = text if isinstance(text, Tensor) else self.tokenize(text)
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.is_floating_point():
            got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(text, Tensor) else "no text"
            raise InvalidInputError(f"text must be strings or (N, L) int64 token ids with N >= 1, got {got}")
        if self.vocab_size is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise InvalidInputError(f"token ids must be in 0..{self.vocab_size - 1} (this tokenizer's vocabulary), got "
                                    f"{int(ids.min())}..{int(ids.max())}")
        return ids.to(self.device)

    def encode_text(self, text: str | Sequence[str] | Tensor, normalize: bool = False) -> Tensor:
        """Strings or ``(N, L)`` token ids -> ``(N, E)`` pooled embeddings, L2-normalised on request."""
        pooled = self.encode_tokens(self.token_ids(text)).pooled
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


# -- latents -----------------------------------------------------------------------------------------------------


class Autoencoder(Module, ABC):
    """Images to a latent space and back: the first stage of latent diffusion.

    ``encode`` takes the ``preprocess``-ed batch (float ``(N, C, H, W)``, usually in ``[-1, 1]``) and returns
    latents ``(N, latent_channels, H / downscale, W / downscale)`` already scaled as a denoiser uses them:
    ``(z - shift) * scale``; ``decode`` undoes that scaling and returns images in ``[0, 1]``. Families with a
    latent distribution (KL) draw from it or take its mean; vector-quantised ones expose their codes besides.
    """

    latent_channels: int
    #: spatial reduction factor from pixels to latents.
    downscale: int
    #: ``z_model = (z - shift) * scale``: the normalisation the denoiser's latents were trained with.
    scale: float = 1.0
    shift: float = 0.0

    @abstractmethod
    def preprocess(self, images: Any) -> Tensor:
        """Paths, PIL images, uint8 or float ``[0, 1]`` tensors -> the ``(N, C, H, W)`` batch ``encode`` takes."""

    @abstractmethod
    def encode(self, x: Tensor, **options: Any) -> Tensor:
        """``(N, C, H, W)`` preprocessed images -> scaled latents ``(N, latent_channels, h, w)``."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents ``(N, latent_channels, h, w)`` -> images ``(N, C, H, W)`` float in ``[0, 1]``."""

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(latent_channels, h, w)`` of an ``(H, W)`` image."""
        h, w = image_size
        return (self.latent_channels, h // self.downscale, w // self.downscale)


# -- exact likelihoods -------------------------------------------------------------------------------------------


class Flow(Module, ABC):
    """A normalizing flow: an invertible map ``x -> z`` with a tractable log-determinant, and a prior on z.

    ``log p(x) = log p_Z(f(x)) + log |det df/dx|``. The default prior is the standard normal; override
    :meth:`prior_log_prob` and :meth:`sample_prior` for another.
    """

    #: the shape of one sample, ``(C, H, W)`` for images.
    event_shape: tuple[int, ...]

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, *event_shape)`` -> ``(z (N, *event_shape), logdet (N,))``, logdet = ``log |det df/dx|``."""

    @abstractmethod
    def inverse(self, z: Tensor) -> Tensor:
        """``z (N, *event_shape)`` -> ``x``: the exact inverse of :meth:`forward`."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The Encoder-style name of :meth:`forward`: ``x -> (z, logdet)``."""
        return self(x)

    def decode(self, z: Tensor) -> Tensor:
        """The Encoder-style name of :meth:`inverse`: ``z -> x``."""
        return self.inverse(z)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """``(N,)`` log density of z under the standard normal."""
        z = z.flatten(1)
        return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def sample_prior(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn((n, *self.event_shape), generator=generator, device=self.device,
                                         dtype=self.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """``(N,)`` exact log density of x (nats), in the space ``forward`` reads."""
        z, logdet = self(x)
        return self.prior_log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, *, bins: int | None = 256, data_range: float = 1.0) -> Tensor:
        """``(N,)`` bits per dimension, the unit image likelihoods are published in.

        For data quantised to ``bins`` levels over an interval of width ``data_range`` (images in [0, 1] from
        8 bits: 256 and 1), the density of dequantised x becomes a probability of the bin it falls in:
        ``bpd = (-log p(x) + D log(bins / data_range)) / (D log 2)``. ``bins=None`` reports the continuous
        density's ``-log p(x) / (D log 2)``.
        """
        dims = math.prod(self.event_shape)
        nats = -self.log_prob(x)
        if bins is not None:
            nats = nats + dims * math.log(bins / data_range)
        return nats / (dims * math.log(2))

    @torch.inference_mode()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` samples ``(n, *event_shape)``: the inverse of prior draws (``temperature`` scales them)."""
        return self.inverse(self.sample_prior(n, generator, temperature))


# -- objects -----------------------------------------------------------------------------------------------------


@dataclass
class DetectorInput:
    """A detector's batch: ``pixels`` ``(N, 3, H, W)`` float (padded to a common size), ``mask`` ``(N, H, W)``
    bool (True on padding), and ``sizes`` ``(N, 2)`` int64, each image's original ``(height, width)``."""

    pixels: Tensor
    mask: Tensor
    sizes: Tensor


@dataclass
class Detections:
    """Detections for one image, in absolute pixel coordinates of the image as given.

    boxes: ``(K, 4)`` float ``(x_min, y_min, x_max, y_max)``; scores: ``(K,)`` in [0, 1];
    labels: ``(K,)`` int64 class ids; names: the K label strings.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]


class Detector(Module, ABC):
    """Finds objects: preprocess, forward and postprocess, composed by :meth:`detect`.

    ``forward`` returns the raw outputs, for DETR-style models ``{"logits": (N, Q, classes + 1), "boxes":
    (N, Q, 4)}`` with boxes as normalised ``(cx, cy, w, h)`` in [0, 1]; ``postprocess`` turns them into
    :class:`Detections` in each image's original pixels.
    """

    #: class id -> name, from the checkpoint's own config.
    id2label: dict[int, str]

    @abstractmethod
    def preprocess(self, images: Any) -> DetectorInput:
        """Images -> a :class:`DetectorInput` batch on the model's device and in its dtype."""

    @abstractmethod
    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """``(N, 3, H, W)`` pixels and ``(N, H, W)`` padding mask -> the raw outputs."""

    @abstractmethod
    def postprocess(self, outputs: dict[str, Tensor], sizes: Tensor, threshold: float = 0.5) -> list[Detections]:
        """Raw outputs and ``(N, 2)`` original sizes -> one :class:`Detections` per image, scores >= threshold."""

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses against ``targets`` (per image: ``boxes``, ``labels``); optional for a family."""
        raise NotImplementedError(f"{type(self).__name__} does not implement a training loss")

    @torch.inference_mode()
    def detect(self, images: Any, threshold: float = 0.5) -> list[Detections]:
        """Preprocess, run, and post-process to boxes in the input images' pixel coordinates."""
        batch = self.preprocess(images)
        return self.postprocess(self(batch.pixels, batch.mask), batch.sizes, threshold)


# -- generation --------------------------------------------------------------------------------------------------


class Pipeline(Module, ABC):
    """Generates samples: ``sample(n, ...)`` gives float ``(n, C, H, W)`` images in ``[0, 1]``."""

    @abstractmethod
    def sample(self, n: int, **options: Any) -> Tensor:
        """``n`` samples, ``(n, C, H, W)`` float in [0, 1] on the pipeline's device."""


#: an entry's ``interface`` -> the contracts its built object implements.
INTERFACES: dict[str, tuple[type, ...]] = {
    "pipeline": (Pipeline,),
    "denoiser": (Denoiser,),
    "sampler": (Sampler,),
    "conditioner": (Conditioner,),
    "encoder": (Encoder,),
    "classifier": (Classifier,),
    "text-encoder": (TextEncoder,),
    "image-text": (Encoder, TextEncoder),
    "autoencoder": (Autoencoder,),
    "flow": (Flow,),
    "detector": (Detector,),
}


def check_contract(obj: object, interface: str, what: str = "the model") -> None:
    """Raise :class:`ContractError` unless ``obj`` implements every contract of ``interface``.

    Python refuses to instantiate a subclass that leaves an abstract method unimplemented; this also catches an
    object of the wrong class altogether, and abstract methods replaced by something that is not callable.
    """
    if interface not in INTERFACES:
        raise ContractError(f"{what} declares interface {interface!r}, which is not one of {', '.join(INTERFACES)}")
    for contract in INTERFACES[interface]:
        if not isinstance(obj, contract):
            raise ContractError(
                f"{what} is a {type(obj).__name__}, which does not implement zoo.registry.{contract.__name__}, the "
                f"contract of interface {interface!r}: subclass it and implement "
                f"{', '.join(sorted(getattr(contract, '__abstractmethods__', ()))) or 'its methods'}")
        broken = sorted(m for m in getattr(contract, "__abstractmethods__", ()) if not callable(getattr(obj, m, None)))
        if broken:
            raise ContractError(f"{what} ({type(obj).__name__}) implements {contract.__name__} but its "
                                f"{', '.join(broken)} {'is' if len(broken) == 1 else 'are'} not callable")
