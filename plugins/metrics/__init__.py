"""Metrics of generators: FID's Inception-v3 as an Encoder (``inception-fid``) and ``zoo fid``.

    enc = zoo.create("inception-fid", weights="~/.cache/torch/hub/checkpoints")  # pytorch-fid's weight file
    feats = zoo.metrics.encoder_features(enc, images)          # (N, 2048) pool3 features, float64 numpy
    zoo.metrics.frechet_distance(feats, "cifar10-train.npz")   # FID against saved reference statistics

``zoo fid DIR_OR_NPZ --ref DIR_OR_NPZ [--encoder NAME]`` (``commands.py``) compares a folder of samples (the
shards and manifest ``zoo.distributed.sample_to_dir`` writes, or image files) with a reference (the same kinds,
or ``.npz`` statistics), on any Encoder's features.

The weights are not on the Hugging Face Hub: pytorch-fid downloads them from a GitHub release,
:data:`WEIGHTS_URL`, into torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``). zoo does not
download them itself; the entry looks for the file in that folder (where it is once pytorch-fid has ever
run), or in a folder given as ``weights=``. Without it, ``pretrained=False`` builds the architecture.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zoo.registry import Command, Component, ModelEntry, hookimpl, lazy

FID = Command("fid", lazy(".commands:run", __name__),
              "Fréchet distance (FID) and KID between samples and a reference", lazy(".commands:arguments", __name__))

#: where pytorch-fid fetches the FID Inception weights (a GitHub release asset of mseitzer/pytorch-fid, 95 MB).
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_FILE = WEIGHTS_URL.rsplit("/", 1)[1]

MODEL = Component("model", build=lazy(".inception:network", __name__), config={}, config_file=None,
                  weights=(WEIGHTS_FILE,))


ENTRIES = (
    ModelEntry(
        name="inception-fid", family="metrics", interface="encoder",
        build=lazy(".inception:build", __name__), components=(MODEL,),
        local_dir=Path(torch.hub.get_dir()) / "checkpoints",
        license="Apache-2.0 (pytorch-fid's port of TensorFlow's Inception-v3 graph)",
        paper="Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash "
              "Equilibrium, arXiv:1706.08500; Szegedy et al. 2016, arXiv:1512.00567",
        description=f"FID's Inception-v3 (2048-d pool3 features, pytorch-fid's layout). Weights: {WEIGHTS_FILE} "
                    f"from {WEIGHTS_URL} (a GitHub release, not the Hub): zoo reads it from torch.hub's "
                    f"checkpoint folder, or from the folder given as weights=.",
    ),
)


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(FID)
