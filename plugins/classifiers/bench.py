"""``zoo bench``'s reference for the timm classifiers (ViT, Swin): timm itself on the same weights.

The twin is ``timm.create_model`` of the classifier's architecture (timm's own defaults, so Swin keeps timm's
unfused window attention), filled with zoo's state dict, and does the work zoo's ``encode`` does: the pooled
features ``forward_head(forward_features(x), pre_logits=True)``. With ``zoo bench --compile`` timm is also timed
under its own ``torch.compile`` of that whole function, the figure zoo's regional compilation is compared with.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def timm_twin(classifier: Any, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """timm's module of ``classifier``'s architecture and head, holding its weights, as timm builds it.

    A timm-format repo names its architecture: ``timm.create_model`` builds it. A transformers-format one was
    mapped onto a timm module by zoo: that module is copied, with the attention path timm would pick restored
    (Swin: timm's unfused window attention).
    """
    import copy

    import timm
    from timm.layers import use_fused_attn
    from timm.models.swin_transformer import WindowAttention

    net = classifier.model
    if classifier.timm_config is not None:
        config = classifier.timm_config
        twin = timm.create_model(config["architecture"], pretrained=False, num_classes=net.num_classes,
                                 global_pool=net.global_pool, **config.get("model_args", {}))
        twin.load_state_dict(net.state_dict())
    else:
        twin = copy.deepcopy(net)
        for module in twin.modules():
            if isinstance(module, WindowAttention):
                module.fused_attn = use_fused_attn(experimental=True)
    return twin.to(device=device, dtype=dtype).eval()


def timm_reference(classifier: Any, inputs: Any) -> dict[str, Callable[[], Any]]:
    """``{"timm eager": run}``, and ``"timm torch.compile"`` with ``inputs.compile``."""
    twin = timm_twin(classifier, device=inputs.device, dtype=inputs.ref_dtype)
    x = inputs.x.to(inputs.ref_dtype)

    def features(x: torch.Tensor) -> torch.Tensor:
        return twin.forward_head(twin.forward_features(x), pre_logits=True)

    runs = {"timm eager": lambda: features(x)}
    if inputs.compile:
        compiled = torch.compile(features, mode=inputs.compile_mode)
        runs["timm torch.compile"] = lambda: compiled(x)
    return runs
