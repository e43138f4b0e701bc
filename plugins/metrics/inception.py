"""FID's Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture"): the 2048-d pool3 features
FID is computed on, in the exact variant of TensorFlow's 2015-12-05 graph that pytorch-fid ported.

Why a variant: FID numbers are only comparable on the network the original TensorFlow implementation used
(Heusel et al. 2017, ``pool_3:0`` of ``classify_image_graph_def.pb``). pytorch-fid reproduces that graph on
torchvision's Inception3 with four differences, kept here:

* InceptionA, InceptionC and the first InceptionE (``Mixed_7b``) average-pool their pool branch with
  ``count_include_pad=False`` (TensorFlow's average pooling ignores the zero padding);
* the last InceptionE (``Mixed_7c``) max-pools its pool branch instead (a bug in the TF graph, kept);
* 1008 classes in ``fc`` (the TF graph's label set), unused by the features;
* inputs in [0, 1] are resized to 299x299 (bilinear, ``align_corners=False``) and mapped to [-1, 1] (``2x - 1``).

Parameter names are torchvision's Inception3 names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.
running_mean``, ..., ``fc.weight``), which are the names of pytorch-fid's weight file
``pt_inception-2015-12-05-6726825d.pth``: it loads as published, no rename table.

Shapes (N images): ``(N, 3, 299, 299)`` -> stem ``(N, 192, 35, 35)`` -> Mixed_5b..5d ``(N, 288, 35, 35)`` ->
Mixed_6a..6e ``(N, 768, 17, 17)`` -> Mixed_7a..7c ``(N, 2048, 8, 8)`` -> global average pool ``(N, 2048)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo.preprocess import load_images
from zoo.registry import Encoder

SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (TensorFlow's, FID's)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1, concatenated (64 + 64 + 96 + pool_features)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384 + 96 + cin)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1): 4 branches of 192 channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320 + 192 + cin)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (320 + 768 + 768 + 192 = 2048 channels).

    ``pool="avg"`` (Mixed_7b: average pool without padding) or ``"max"`` (Mixed_7c: the TF graph's max pool).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The network: ``(N, 3, 299, 299)`` in [-1, 1] -> pool3 features ``(N, 2048)`` (:meth:`forward`)."""

    def __init__(self, num_classes: int = 1008):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        #: the TF graph's 1008-way classifier: in the weight file, not used by the features.
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                      # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                      # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                                  # ... (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))                                         # pool3: (N, 2048)


def network(config: dict[str, Any]) -> FIDInceptionV3:
    """The component's builder: the network has one published architecture, so its config is empty."""
    return FIDInceptionV3()


class InceptionFID(Encoder):
    """The :class:`zoo.registry.Encoder` over :class:`FIDInceptionV3`: images -> 2048-d pool3 features.

    ``preprocess`` takes paths, PIL images, uint8 or float [0, 1] tensors (greyscale ``(N, 1, H, W)`` is
    repeated to RGB, as pytorch-fid's loader converts files to RGB) and resizes each to 299x299 with
    ``F.interpolate(mode="bilinear", align_corners=False)`` on [0, 1] floats, pytorch-fid's resize; ``encode``
    maps [0, 1] to [-1, 1] and runs the network.
    """

    image_size = (SIZE, SIZE)

    def __init__(self, name: str = "inception-fid"):
        super().__init__()
        self.name = name
        self.model = FIDInceptionV3()

    def preprocess(self, images: Any) -> Tensor:
        if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4 and images.shape[1] == 1:
            images = torch.as_tensor(images).expand(-1, 3, -1, -1)
        batch = []
        for img in load_images(images):
            if isinstance(img, Image.Image):
                img = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            x = img.double() / 255 if img.dtype == torch.uint8 else img.double()  # resized in float64
            batch.append(F.interpolate(x[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0])
        return torch.stack(batch).to(device=self.device, dtype=self.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """``(N, 3, 299, 299)`` in [0, 1] -> ``(N, 2048)`` pool3 features."""
        return self.model(2 * self.model_input(x) - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)


def build(entry: Any, files: Any, *, device: torch.device, dtype: torch.dtype) -> InceptionFID:
    """The registry's builder for inception-fid: pytorch-fid's weight file (``files``), or random weights."""
    from zoo.loader import load_component

    encoder = InceptionFID(entry.name)
    encoder.model = load_component(entry.component("model"), files, device=device, dtype=dtype)
    return encoder.eval()
