"""Saving a model in the Hub layout it was loaded from, with a model card, and sharing it on the Hub.

    pipe = zoo.create("ddpm-digits")
    zoo.save_pretrained(pipe, "my-digits")      # config.json, diffusion_pytorch_model.safetensors,
                                                # scheduler_config.json, README.md
    UNet2DModel.from_pretrained("my-digits")    # diffusers reads it as it reads google/ddpm-*
    zoo.create("ddpm-digits", weights="my-digits")
    zoo.push_to_hub(pipe, "me/my-digits")       # the same folder, uploaded with huggingface_hub

What is written comes from the model's registry entry, so it is the same for every family:

* each of the entry's components (:class:`zoo.registry.Component`) in its ``subfolder``: its config file from
  the module's ``config.to_dict()``, and its weights as ``safetensors`` under the component's first weight
  name. This is the published layout only when the module's parameter names are the published ones, i.e. when
  the component's rename table and ``convert`` leave the module's own state dict unchanged (a model whose modules
  carry no ``config.to_dict()`` says what its config file holds with ``model.pretrained_config(component_name)``,
  as zoo's timm classifiers do); a component whose
  loading converts names (q/k/v fused, legacy names) is refused, naming it, rather than written in a layout no
  other library reads;
* each of the entry's other files (``scheduler_config.json``, ...) from the model attribute of the same stem
  (``pipe.scheduler_config``), as JSON;
* ``README.md``, a model card: the license, paper, published result and description the registry holds, and for
  a model zoo trains itself, the recipe (``zoo train NAME``).

The folder is written next to its final place and renamed into it, so an interrupted save leaves nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from zoo.registry import Component, ModelEntry, resolve

from .errors import ZooError
from .loader import convert_state_dict
from .outputs import follow_umask


def _entry(model: Any, name: str | None) -> ModelEntry:
    from .api import get_entry

    name = name or getattr(model, "name", None) or getattr(model, "entry_name", None)
    if not name:
        raise ZooError(f"cannot tell which registry entry this {type(model).__name__} is: pass name=")
    return get_entry(name.split(" ")[0])


def component_module(model: Any, component: Component) -> nn.Module:
    """The module of ``model`` that ``component`` built: the sub-module whose attribute name is the component's
    name (``pipe.denoiser.unet`` for ``"unet"``), or the model itself when it is a module of one component."""
    roots = [model] if isinstance(model, nn.Module) else [v for v in vars(model).values() if isinstance(v, nn.Module)]
    for root in roots:
        for path, module in root.named_modules():
            if path.split(".")[-1] == component.name:
                return module
    raise ZooError(f"cannot find the {component.name!r} module in this {type(model).__name__} to save")


def _config_dict(module: nn.Module, component: Component) -> dict[str, Any]:
    config = getattr(module, "config", None)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    raise ZooError(f"component {component.name!r} ({type(module).__name__}) has no config zoo can write as "
                   f"{component.config_file} (config.to_dict()); saving is not supported for it yet")


def model_card(entry: ModelEntry) -> str:
    """README.md for a saved model: YAML front matter the Hub reads (license, library, tags), then what the
    registry says about the weights."""
    single = entry.license and " " not in entry.license.strip() and entry.license != "unknown"
    license_id = entry.license.strip().lower() if single else "other"  # the full text is in the card
    lines = ["---", f"license: {license_id}", "library_name: zoo", "tags:", f"- {entry.family}",
             f"- {entry.interface}", "---", "", f"# {entry.name}", ""]
    if entry.description:
        lines += [entry.description, ""]
    lines += [f"- **License:** {entry.license}"]
    if entry.paper:
        lines.append(f"- **Paper:** {entry.paper}")
    if entry.result:
        lines.append(f"- **Published result:** {entry.result}")
    if entry.repo_id:
        lines.append(f"- **Original weights:** [{entry.repo_id}](https://huggingface.co/{entry.repo_id})"
                     + (f" at commit `{entry.revision}`" if entry.revision else ""))
    if entry.train is not None:
        train = resolve(entry.train)
        doc = " ".join((train.__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"- **Training recipe:** `zoo train {entry.name}` ({train.__module__}): {doc}")
    lines += ["", "## Use", "", "```python", "import zoo", "",
              f'model = zoo.create("{entry.name}", weights="PATH_OR_REPO_ID")', "```", ""]
    return "\n".join(lines)


def save_pretrained(model: Any, folder: str | os.PathLike, *, name: str | None = None) -> Path:
    """Write ``model`` in its entry's Hub layout with a model card (see the module docstring); returns the folder.

    Args:
        model: what ``zoo.create`` returned.
        folder: where to write; replaced whole if it exists.
        name: the registry entry, when the model does not carry its name (``model.name``).
    Raises:
        ZooError: the model's layout cannot be written (a component whose loading converts names, a config zoo
            cannot serialise, an entry file the model holds no value for).
    """
    from safetensors.torch import save_file

    entry = _entry(model, name)
    folder = Path(folder).expanduser()
    plans: list[tuple[str, Any]] = []
    for component in entry.components:
        component = component.resolve()
        module = component_module(model, component)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        published = component.export(state) if component.export is not None else state
        # what loading the written file would give back must be the module's own state dict, name for name
        converted = convert_state_dict(component, {k: v.to("meta") for k, v in published.items()})
        if set(converted) != set(state) or any(tuple(converted[k].shape) != tuple(v.shape) for k, v in state.items()):
            why = ("its export does not invert the conversion loading applies" if component.export is not None else
                   "it converts the published names on loading (its rename table or convert), and has no export "
                   "(the inverse) to write them back")
            raise ZooError(f"{entry.name}: component {component.name!r} cannot be saved in its published layout: "
                           f"{why}")
        state = {k: v.contiguous() for k, v in published.items()}
        if component.config_file:  # the model may say what its config file holds (a timm classifier does)
            writer = getattr(model, "pretrained_config", None)
            config = writer(component.name) if callable(writer) else _config_dict(module, component)
            plans.append((component.path(component.config_file), config))
        plans.append((component.path(component.weights[0]), state))
    for slot in entry.files:
        file = slot if isinstance(slot, str) else slot[0]
        value = getattr(model, Path(file).stem, None)
        if not file.endswith(".json") or not isinstance(value, dict):
            raise ZooError(f"{entry.name}: no value for {file} on this {type(model).__name__} (expected a dict "
                           f"attribute {Path(file).stem!r}); saving is not supported for this family yet")
        plans.append((file, value))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for relative, value in plans:
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if relative.endswith(".safetensors"):
                save_file(value, str(path), metadata={"format": "pt", "saved_by": f"zoo.save_pretrained {entry.name}"})
            else:
                path.write_text(json.dumps(value, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(entry))
        follow_umask(tmp)  # safetensors writes 0600
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def push_to_hub(model: Any, repo_id: str, *, name: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None) -> str:
    """:func:`save_pretrained` into a temporary folder and upload it with huggingface_hub (``create_repo`` then
    ``upload_folder``); returns the commit URL. Needs a token with write access (``hf auth login`` or
    ``HF_TOKEN``)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", name=name)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                 commit_message=commit_message or f"Upload {_entry(model, name).name} with zoo")
    return str(getattr(info, "commit_url", info))
