"""Small tensor helpers every floor uses: broadcasting per-sample scalars, and the image-batch rule."""
from __future__ import annotations

from torch import Tensor
from .errors import ArgumentTypeError, InvalidInputError


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``(N,)`` per-sample scalars shaped to broadcast over ``like`` ``(N, ...)``: ``(N, 1, ..., 1)``, any rank.

    A 0-dim or one-element tensor broadcasts as it is. Used wherever a noise level or a coefficient per sample
    scales a batch: images ``(N, C, H, W)``, latents, token sequences ``(N, L, D)`` or GMM points alike.
    """
    if values.ndim == 0 or values.numel() == 1:
        return values.reshape([1] * like.ndim) if like.ndim else values.reshape(())
    return values.reshape(-1, *[1] * (like.ndim - 1))


def check_image_batch(x: Tensor, *, channels: int | None = None, size: tuple[int, int] | None = None,
                      what: str = "input", fix: str = "") -> None:
    """Raise a ValueError (TypeError for a wrong type) naming the problem when ``x`` is not a float
    ``(N, C, H, W)`` batch of the right channels and size.

    ``fix`` is appended to every message (e.g. what the caller's ``preprocess`` returns).
    """
    tail = f"; {fix}" if fix else ""
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"{what} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}{tail}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x[None])" if x.ndim == 3 else ""
        raise InvalidInputError(f"{what} must have shape (N, C, H, W), got {tuple(x.shape)}{hint}{tail}")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{what} must be a floating-point tensor, got {x.dtype} (convert with x.float() / 255){tail}")
    if channels is not None and x.shape[1] != channels:
        raise InvalidInputError(f"{what} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)}){tail}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise InvalidInputError(f"{what} must be {size[0]}x{size[1]} pixels, got {x.shape[-2]}x{x.shape[-1]}{tail}")
