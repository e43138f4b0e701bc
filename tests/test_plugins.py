"""The plugin system: third-party packages register models and samplers through the ``zoo`` entry point.

The first tests need the toy plugin in ``tests/thirdparty_plugin`` installed (CI does; by hand:
``pip install -e tests/thirdparty_plugin``). The others build registries from plugin objects and from temporary
distributions put on ``sys.path``, which importlib.metadata finds exactly as it finds installed ones.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
import types
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

import zoo
import zoo.api
from zoo.errors import UnknownModelError, ZooError
from zoo.registry import DuplicateNameError, EDMSchedule, Encoder, ModelEntry, build_registry, hookimpl, sampler


def _toy_installed() -> bool:
    try:
        importlib.metadata.distribution("zoo-toy-plugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_toy = pytest.mark.skipif(
    not _toy_installed(),
    reason="the third-party test plugin is not installed: pip install -e tests/thirdparty_plugin")


def entry(name: str) -> ModelEntry:
    return ModelEntry(name=name, family="test", interface="encoder", build=lambda *a, **k: None)


def plugin(name: str, *, models: list[str] = (), samplers: list[str] = (),
           raises: Exception | None = None) -> types.ModuleType:
    """A plugin object, as an imported plugin module would be."""
    module = types.ModuleType(name)

    def zoo_models():
        if raises is not None:
            raise raises
        return [entry(m) for m in models]

    module.zoo_models = hookimpl(zoo_models)
    module.zoo_samplers = hookimpl(lambda: [sampler(s)(lambda *a, **k: None) for s in samplers])
    return module


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Let zoo.create / zoo.list_models see a registry built here, by the real build_registry."""
    def install(*plugins: object) -> None:
        reg = build_registry(plugins, entry_points=False)
        monkeypatch.setattr(zoo.api, "get_registry", lambda: reg)
    return install


@pytest.fixture
def distributions(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Put temporary "installed" distributions on sys.path: ``add(dist, {ep_name: module}, {module: source})``."""
    site = tmp_path / "site"
    site.mkdir()
    modules: list[str] = []

    def add(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> None:
        info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(
            "[zoo]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))
        for module, source in sources.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        importlib.invalidate_caches()

    sys.path.insert(0, str(site))
    try:
        yield add
    finally:
        sys.path.remove(str(site))
        for module in modules:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        zoo.api.get_registry.cache_clear()  # the next zoo.get_registry() must not see these distributions


FINE = """
    from zoo.registry import ModelEntry, hookimpl

    @hookimpl
    def zoo_models():
        return [ModelEntry(name="{name}", family="test", interface="encoder", build=lambda *a, **k: None)]
"""


# -- the installed third-party plugin ------------------------------------------------------------------------------

@needs_toy
def test_third_party_plugin_is_listed_and_built():
    zoo.reload()
    assert "toy-mlp" in zoo.list_models("*") and zoo.list_models("toy-*") == ["toy-mlp"]
    assert "toy-mlp" in zoo.list_models(family="toy", interface="encoder")
    assert "toy-euler" in zoo.list_samplers()
    assert zoo.info("toy-mlp")["plugin"] == "toy"

    model = zoo.create("toy-mlp", device="cpu")
    assert isinstance(model, Encoder)
    features = model.encode(model.preprocess(torch.rand(2, 3, 32, 32)))
    assert features.shape == (2, 16) and torch.isfinite(features).all()
    # the shipped weights were loaded, not the random initialisation
    from safetensors.torch import load_file
    shipped = load_file(str(Path(zoo.info("toy-mlp")["local_dir"]) / "model.safetensors"))
    assert torch.equal(model.net[1].weight, shipped["net.1.weight"])


@needs_toy
def test_third_party_sampler_runs_through_the_sampler_contract():
    euler = zoo.get_sampler("toy-euler")
    sigmas = EDMSchedule().sigmas(10)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64) * sigmas[0]
    # With D = 0 each Euler step scales x by sigma_next / sigma: the product telescopes to sigmas[-1] / sigmas[0].
    out = euler(lambda x, sigma: torch.zeros_like(x), x, sigmas, signal_scale=torch.ones_like)
    assert torch.allclose(out, x * sigmas[-1] / sigmas[0])


def test_list_models_works_with_whatever_is_installed():
    zoo.reload()
    names = zoo.list_models("*")
    assert names == sorted(names) and isinstance(zoo.get_registry().failures, dict)


# -- failures stay local -------------------------------------------------------------------------------------------

def test_plugin_whose_hook_raises_is_reported_by_name_and_the_others_keep_working():
    reg = build_registry((plugin("good", models=["good-model"], samplers=["good-sampler"]),
                          plugin("broken", raises=RuntimeError("weights table is malformed"))), entry_points=False)
    assert "good-model" in reg.models and "good-sampler" in reg.samplers
    assert "zoo_models() raised RuntimeError: weights table is malformed" in reg.failures["broken"]
    assert "good" not in reg.failures


def test_plugin_that_fails_to_import_is_reported_by_name_and_the_others_keep_working(distributions):
    distributions("zoo-test-plugins", {"tmpbroken": "zoo_tmp_broken", "tmpfine": "zoo_tmp_fine"}, {
        "zoo_tmp_broken": "raise ImportError('zoo_tmp_broken needs a package that is not installed')",
        "zoo_tmp_fine": FINE.format(name="tmp-fine"),
    })
    reg = zoo.reload()
    assert "needs a package that is not installed" in reg.failures["tmpbroken"]
    assert "zoo_tmp_broken" in reg.failures["tmpbroken"]  # which entry point, so the user knows what to uninstall
    assert "tmp-fine" in zoo.list_models("tmp-*") and "tmpfine" not in reg.failures
    if _toy_installed():
        assert zoo.create("toy-mlp", device="cpu") is not None


def test_same_entry_point_name_in_two_distributions_keeps_both(distributions):
    distributions("zoo-test-a", {"tmpsame": "zoo_tmp_a"}, {"zoo_tmp_a": FINE.format(name="tmp-a")})
    distributions("zoo-test-b", {"tmpsame": "zoo_tmp_b"}, {"zoo_tmp_b": FINE.format(name="tmp-b")})
    reg = build_registry()
    assert {"tmp-a", "tmp-b"} <= set(reg.models)
    assert {reg.models["tmp-a"].plugin, reg.models["tmp-b"].plugin} == {"tmpsame", "zoo-test-b:tmpsame"}


def test_unmarked_misspelt_or_ill_typed_hooks_are_reported():
    unmarked = types.ModuleType("unmarked")
    unmarked.zoo_models = lambda: [entry("never-seen")]
    misspelt = types.ModuleType("misspelt")
    misspelt.zoo_model = hookimpl(lambda: [entry("never-seen")])
    ill_typed = types.ModuleType("ill_typed")
    ill_typed.zoo_models = hookimpl(lambda: ["not-an-entry"])
    shouting = plugin("shouting", models=["Big Model"])
    reg = build_registry((unmarked, misspelt, ill_typed, shouting, plugin("fine", models=["fine"])),
                         entry_points=False)
    assert list(reg.models) == ["fine"]
    assert "not marked @zoo.hookimpl" in reg.failures["unmarked"]
    assert "zoo_model is not a zoo hook" in reg.failures["misspelt"]
    assert "returned a str, not a ModelEntry" in reg.failures["ill_typed"]
    assert "'Big Model'" in reg.failures["shouting"]


# -- names -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["model", "sampler"])
def test_two_plugins_claiming_one_name_raise_naming_both(kind: str):
    claim = {"models": ["shared-name"]} if kind == "model" else {"samplers": ["shared-name"]}
    with pytest.raises(DuplicateNameError) as err:
        build_registry((plugin("first_family", **claim), plugin("second_family", **claim)), entry_points=False)
    message = str(err.value)
    assert f"{kind} name 'shared-name'" in message and "'first_family'" in message and "'second_family'" in message
    assert isinstance(err.value, ZooError)  # the CLI prints ZooErrors as one line


def test_one_plugin_listing_a_name_twice_is_a_duplicate_too():
    with pytest.raises(DuplicateNameError, match="twice by plugin 'clumsy'"):
        build_registry((plugin("clumsy", models=["twin", "twin"]),), entry_points=False)


def test_unknown_model_suggests_close_names(use_registry):
    use_registry(plugin("ddpm_like", models=["ddim-cifar", "ddim-church", "ddpm-cifar"], samplers=["ddim"]))
    with pytest.raises(UnknownModelError) as err:
        zoo.create("ddim-cifr", device="cpu")
    assert err.value.suggestions[0] == "ddim-cifar"
    assert "unknown model 'ddim-cifr'" in str(err.value) and "Did you mean 'ddim-cifar'" in str(err.value)
    with pytest.raises(UnknownModelError, match="unknown sampler 'ddmi'.*'ddim'"):
        zoo.get_sampler("ddmi")


def test_zoo_registry_is_the_contracts_package_not_a_function():
    """`zoo.registry` names the subpackage of contracts; the plugin registry is `zoo.get_registry()`."""
    import importlib

    import zoo.registry as contracts

    assert contracts is importlib.import_module("zoo.registry") and hasattr(contracts, "Denoiser")
    assert zoo.get_registry().models is zoo.get_registry().models  # built once, cached
