"""The plugin system: third-party packages register models and samplers through the ``zoo`` entry point.

The first tests need the toy plugin in ``tests/thirdparty_plugin`` installed (CI does; by hand:
``pip install -e tests/thirdparty_plugin``). The others build registries from plugin objects and from temporary
distributions put on ``sys.path``, which importlib.metadata finds exactly as it finds installed ones.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
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
from zoo.testing import gmm_pipeline


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
def test_third_party_command_runs_end_to_end():
    """`zoo toy-encode` comes from the example plugin's zoo_commands hook: listed, documented, run as a user would."""
    import subprocess

    help_text = subprocess.run(["zoo", "--help"], capture_output=True, text=True, check=True).stdout
    assert "toy-encode" in help_text
    result = subprocess.run(["zoo", "toy-encode", "toy-mlp", "-n", "3", "--device", "cpu"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("toy-mlp: 3 features of size 16, mean norm ")
    plugins = subprocess.run(["zoo", "plugins"], capture_output=True, text=True, check=True).stdout
    assert "commands: toy-encode" in plugins
    bad = subprocess.run(["zoo", "toy-encode", "toy-mpl", "--device", "cpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean 'toy-mlp'" in bad.stderr and "Traceback" not in bad.stderr


def test_hooks_take_a_register_callback_or_return_a_list():
    from zoo.registry import Command

    class Registering:
        @hookimpl
        def zoo_models(self, register):
            register(entry("by-register"))

        @hookimpl
        def zoo_commands(self, register):
            register(Command("say-hi", lambda args: print("hi"), "greet"))

    reg = build_registry((Registering(), plugin("returning", models=["by-return"])), entry_points=False)
    assert {"by-register", "by-return"} <= set(reg.models) and not reg.failures
    assert reg.commands["say-hi"].help == "greet" and reg.command_plugins["say-hi"]


def test_a_command_claimed_twice_is_a_duplicate_and_a_non_command_is_refused():
    from zoo.registry import Command

    def commands(*names):
        class P:
            @hookimpl
            def zoo_commands(self, register):
                for n in names:
                    register(Command(n, lambda args: None, "") if n != "not-a-command" else n)
        return P()

    reg = build_registry((commands("twice"), commands("twice"), commands("once")), entry_points=False)
    assert list(reg.commands) == ["once"] and ("command", "twice") in reg.clashes
    with pytest.raises(DuplicateNameError, match="command name 'twice'"):
        reg.check_clash("command", "twice")
    reg = build_registry((commands("not-a-command"),), entry_points=False)
    assert "registered a str, not a Command" in next(iter(reg.failures.values()))


def test_a_plugin_command_may_not_shadow_a_core_command(use_registry, capsys):
    from zoo.cli import build_parser
    from zoo.registry import Command

    class Shadow:
        @hookimpl
        def zoo_commands(self, register):
            register(Command("list", lambda args: print("hijacked"), "not zoo's list"))

    use_registry(Shadow())
    parser = build_parser()
    assert "registers the command 'list', which is zoo's own; ignored" in capsys.readouterr().err
    assert parser.parse_args(["list"]).fn.__name__ == "cmd_list"


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
def test_a_name_two_plugins_claim_is_unavailable_and_the_rest_works(kind: str, use_registry):
    claim = {"models": ["shared-name"]} if kind == "model" else {"samplers": ["shared-name"]}
    use_registry(plugin("first_family", **claim), plugin("second_family", **claim),
                 plugin("bystander", models=["other-model"], samplers=["other-sampler"]))
    lookup = zoo.get_entry if kind == "model" else zoo.get_sampler
    with pytest.raises(DuplicateNameError) as err:
        lookup("shared-name")
    message = str(err.value)
    assert f"{kind} name 'shared-name'" in message and "'first_family'" in message and "'second_family'" in message
    assert isinstance(err.value, ZooError) and isinstance(err.value, KeyError)  # both except styles work
    assert zoo.get_entry("other-model").name == "other-model" and zoo.get_sampler("other-sampler")
    assert "shared-name" not in zoo.list_models() and "shared-name" not in zoo.list_samplers()


def test_a_plugin_that_clashes_with_a_builtin_leaves_the_builtins_working(capsys):
    """The real entry points plus a third-party plugin claiming the offline default's name and a built-in sampler."""
    reg = build_registry((plugin("intruder", models=["ddpm-digits"], samplers=["euler"]),))
    assert "ddpm-digits" not in reg.models and "euler" not in reg.samplers
    assert "ddim-cifar" in reg.models and "ddim" in reg.samplers and "vit-b16" in reg.models
    with pytest.raises(DuplicateNameError, match="'ddpm' and 'intruder'"):
        reg.check_clash("model", "ddpm-digits")


def test_one_plugin_listing_a_name_twice_is_a_duplicate_too():
    reg = build_registry((plugin("clumsy", models=["twin", "twin", "single"]),), entry_points=False)
    assert list(reg.models) == ["single"]
    with pytest.raises(DuplicateNameError, match="twice by plugin 'clumsy'"):
        reg.check_clash("model", "twin")


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


# -- the third-party example plugin's sampler and model follow the contracts -----------------------------------


@needs_toy
def test_toy_sampler_reports_every_step_and_stops_early():
    """Before: toy-euler never called report(), so callbacks, progress bars and early stopping saw nothing."""
    zoo.reload()
    pipe = gmm_pipeline("eps")
    seen = []
    pipe.sample(16, steps=5, sampler="toy-euler", callback=lambda info: seen.append(info.step), progress=False)
    assert seen == [0, 1, 2, 3, 4]

    def stop_after_two(info):
        if info.step == 1:
            raise StopIteration
    pipe.sample(16, steps=5, sampler="toy-euler", callback=stop_after_two, progress=False)
    assert pipe.last_nfe == 2


@needs_toy
def test_toy_preprocess_follows_the_models_device():
    """Before: a CPU input met the model's buffers on another device (meta here; CUDA in practice)."""
    model = zoo.create("toy-mlp", device="meta")
    x = model.preprocess(torch.rand(2, 3, 32, 32))
    assert x.device.type == "meta" and x.shape == (2, 3, 8, 8)
    cpu = zoo.create("toy-mlp", device="cpu", dtype=torch.bfloat16)
    features = cpu.encode(torch.rand(2, 3, 8, 8))  # float32 batch on a bfloat16 model
    assert features.dtype == torch.bfloat16 and features.shape == (2, 16)


# -- lazy references (what lets listing import no model module) -----------------------------------------------------


def test_lazy_imports_on_first_call_and_names_what_it_could_not_reach():
    from zoo.registry import InvalidInputError, lazy, resolve

    join = lazy("os.path:join")
    assert join("a", "b") == os.path.join("a", "b") and resolve(join) is os.path.join and resolve(3) == 3
    assert lazy(".model:build_pipeline", "zoo.plugins.ddpm") == lazy(".model:build_pipeline", "zoo.plugins.ddpm")
    assert lazy("zoo.plugins.ddpm.unet:UNet2DConfig.from_dict").resolve().__name__ == "from_dict"  # dotted attribute
    for bad in ("no_colon", "a:b:c", "", "a:"):
        with pytest.raises(InvalidInputError, match="module:attribute"):
            lazy(bad)
    with pytest.raises(InvalidInputError, match="package="):
        lazy(".model:x")
    with pytest.raises(ModuleNotFoundError) as info:
        lazy("zoo_no_such_module:f")()
    assert "zoo_no_such_module:f" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(AttributeError):
        lazy("os.path:no_such_function").resolve()
