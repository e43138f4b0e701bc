"""Image classifiers run by timm modules: the ViT and Swin families (``vit.py``, ``swin.py``), their shared
Classifier over timm (``classifier.py``) and the ``zoo classify`` command (``commands.py``).

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)                  # [[(label, prob), ...]] ImageNet-1k names
    feats = clf.encode(clf.preprocess(images))          # (N, 768) class token after the final norm
    maps = zoo.create("swin-t").encode(x, features="stages")   # [(N, 96, 56, 56), ..., (N, 768, 7, 7)]

A third-party family of timm classifiers can reuse ``classifier.py`` (``ImageClassifier``, ``timm_component``,
``build_timm_classifier``, ``build_hf_classifier``): it is public API of this plugin.
"""
from __future__ import annotations

from zoo.registry import hookimpl

from . import swin, vit
from .commands import CLASSIFY


@hookimpl
def zoo_models(register) -> None:
    for entry in (*vit.ENTRIES, *swin.ENTRIES):
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(CLASSIFY)
