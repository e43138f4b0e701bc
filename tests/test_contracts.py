"""One test per contract, each with the smallest implementation a plugin author could write, in the test itself.

Each shows what the contract asks for (the abstract methods) and what it then gives for free (the concrete
helpers), and that ``zoo.create`` refuses an object that does not implement the contract its entry declares.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import zoo
from zoo.diffusion import ClassConditioner, DiffusionPipeline
from zoo.errors import ContractError, ZooError
from zoo.registry import (INTERFACES, Autoencoder, Classifier, Conditioner, Detections, Detector, DetectorInput,
                          Encoder, Flow, ModelEntry, Pipeline, TextEncoder, TextFeatures, check_contract, hookimpl)
from zoo.testing import GMMDenoiser, ring, sliced_wasserstein


# -- images in ---------------------------------------------------------------------------------------------------


class MeanColour(Encoder):
    """(N, 3, 4, 4) -> the mean colour, through one learned linear map."""

    image_size = (4, 4)

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def preprocess(self, images) -> Tensor:
        x = torch.as_tensor(images, dtype=torch.float32)
        return nn.functional.interpolate(x, size=self.image_size).to(self.device, self.dtype)

    def encode(self, x: Tensor) -> Tensor:
        return self.proj(self.model_input(x).mean((2, 3)))


class BrightOrDark(Classifier):
    image_size = (4, 4)
    labels = ["dark", "bright"]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def preprocess(self, images) -> Tensor:
        return torch.as_tensor(images, dtype=torch.float32).to(self.device, self.dtype)

    def encode(self, x: Tensor) -> Tensor:
        return self.model_input(x).mean((1, 2, 3))[:, None]

    def forward(self, x: Tensor) -> Tensor:
        b = self.encode(x) - 0.5
        return torch.cat([-b, b], dim=1) * self.scale


def test_encoder_checks_and_places_its_input():
    enc = MeanColour().to(torch.float64)
    assert enc.device.type == "cpu" and enc.dtype == torch.float64
    out = enc.encode(torch.rand(2, 3, 4, 4, dtype=torch.float32))  # moved and cast by model_input
    assert out.shape == (2, 3) and out.dtype == torch.float64
    with pytest.raises(ValueError, match=r"4x4 pixels.*\.preprocess"):
        enc.encode(torch.rand(2, 3, 5, 5))
    with pytest.raises(TypeError, match="floating-point"):
        enc.encode(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_classifier_gets_classify_from_forward_and_labels():
    clf = BrightOrDark()
    top = clf.classify(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]), top_k=1)
    assert [t[0][0] for t in top] == ["dark", "bright"] and clf.id2label == {0: "dark", 1: "bright"}


# -- text in -----------------------------------------------------------------------------------------------------


class Bytes(TextEncoder):
    """Texts as UTF-8 bytes (0 pads), two residual layers, pooled = the mean of the text's tokens."""

    context_length = 8

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.norm = nn.LayerNorm(4)

    def tokenize(self, texts) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            b = list(t.encode())[: self.context_length]
            ids[i, : len(b)] = torch.tensor(b)
        return ids

    def encode_tokens(self, ids: Tensor, *, layer: int | None = None) -> TextFeatures:
        states = [self.embed(ids)]
        for lin in self.layers:
            states.append(states[-1] + lin(states[-1]))
        mask = ids != 0
        final = self.norm(states[-1])
        pooled = (final * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return TextFeatures(final if layer is None else states[layer], pooled, mask)


def test_text_encoder_states_by_layer_pooled_and_mask():
    enc = Bytes()
    ids = enc.tokenize(["hi", "hello"])
    last, penultimate = enc.encode_tokens(ids), enc.encode_tokens(ids, layer=-2)
    assert last.states.shape == (2, 8, 4) and torch.equal(penultimate.states, enc.encode_tokens(ids, layer=1).states)
    assert last.mask.sum(1).tolist() == [2, 5]
    assert torch.equal(last.pooled, penultimate.pooled), "pooled comes from the final layer whatever the layer"
    assert torch.allclose(enc.encode_text(["hi", "hello"], normalize=True).norm(dim=-1), torch.ones(2))
    assert torch.equal(enc.encode_text(ids), last.pooled)  # ids or strings
    with pytest.raises(ValueError, match="int64 token ids"):
        enc.encode_text(torch.zeros(2, 8))


# -- latents -----------------------------------------------------------------------------------------------------


class AveragePool(Autoencoder):
    """2x2 average pooling down, nearest-neighbour up; latents normalised with a scale and shift."""

    latent_channels, downscale, scale, shift = 1, 2, 2.0, 0.25

    def preprocess(self, images: Tensor) -> Tensor:
        return images * 2 - 1

    def encode(self, x: Tensor) -> Tensor:
        return (nn.functional.avg_pool2d(x, 2) - self.shift) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        x = nn.functional.interpolate(z / self.scale + self.shift, scale_factor=2.0)
        return ((x.float() + 1) / 2).clamp(0, 1)


def test_autoencoder_in_the_pipeline_slot_decodes_samples_and_encodes_for_invert():
    ae = AveragePool()
    assert ae.latent_shape((8, 6)) == (1, 4, 3)
    gmm = ring(std=0.2, shape=(1, 2, 2))
    pipe = DiffusionPipeline(GMMDenoiser(gmm, "eps"), gmm.shape, autoencoder=ae, default_sampler="euler",
                             invert_sampler="euler")
    noise = torch.randn(4, *gmm.shape, dtype=torch.float64)
    latents = pipe.sample(4, steps=10, noise=noise, output="raw", progress=False)
    images = pipe.sample(4, steps=10, noise=noise, progress=False)
    assert images.shape == (4, 1, 4, 4) and torch.allclose(images, ae.decode(latents), atol=1e-6)
    # invert reads images through the autoencoder: the noise that makes its latents
    back = pipe.invert(images, steps=10, progress=False)
    direct = pipe.invert(ae.encode(ae.preprocess(images)), steps=10, progress=False, input="raw")
    assert torch.allclose(back, direct)


# -- exact likelihoods -------------------------------------------------------------------------------------------


class Affine(Flow):
    """z = (x - shift) * exp(-log_scale), elementwise: x ~ N(shift, exp(log_scale)^2)."""

    event_shape = (2, 2, 2)

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.full(self.event_shape, 0.5, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.full(self.event_shape, -1.0, dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * (-self.log_scale).exp()
        return z, (-self.log_scale).sum().expand(len(x))

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.log_scale.exp() + self.shift


def test_flow_log_prob_bits_per_dim_and_sampling():
    flow = Affine()
    x = torch.rand(5, *flow.event_shape, dtype=torch.float64)
    exact = torch.distributions.Normal(flow.shift, flow.log_scale.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(flow.log_prob(x), exact, atol=1e-12)
    d = math.prod(flow.event_shape)
    assert torch.allclose(flow.bits_per_dim(x), (-exact + d * math.log(256)) / (d * math.log(2)), atol=1e-12)
    assert torch.allclose(flow.bits_per_dim(x, bins=None), -exact / (d * math.log(2)), atol=1e-12)
    z, logdet = flow.encode(x)
    assert torch.allclose(flow.decode(z), x, atol=1e-12) and logdet.shape == (5,)
    samples = flow.sample(4096, generator=torch.Generator().manual_seed(0))
    assert abs(float(samples.mean()) - 0.5) < 0.02 and abs(float(samples.std()) - math.exp(-1)) < 0.02


# -- objects -----------------------------------------------------------------------------------------------------


class BrightestPixel(Detector):
    """One box per image, around its brightest pixel; scored by that pixel's value."""

    id2label = {0: "light"}

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def preprocess(self, images: Tensor) -> DetectorInput:
        sizes = torch.tensor([list(img.shape[-2:]) for img in images])
        return DetectorInput(images.to(self.dtype), torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool),
                             sizes)

    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        n, _, h, w = pixels.shape
        flat = pixels.mean(1).flatten(1)
        score, index = flat.max(1)
        cx, cy = (index % w + 0.5) / w, (index // w + 0.5) / h
        boxes = torch.stack([cx, cy, torch.full_like(cx, 1 / w), torch.full_like(cy, 1 / h)], -1)[:, None]
        return {"scores": (score * self.gain)[:, None], "boxes": boxes}

    def postprocess(self, outputs, sizes, threshold=0.5) -> list[Detections]:
        out = []
        for scores, boxes, (h, w) in zip(outputs["scores"], outputs["boxes"], sizes.tolist()):
            keep = scores >= threshold
            cx, cy, bw, bh = boxes[keep].unbind(-1)
            xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
            out.append(Detections(xyxy, scores[keep], torch.zeros(int(keep.sum()), dtype=torch.long),
                                  ["light"] * int(keep.sum())))
        return out


def test_detector_detect_composes_preprocess_forward_postprocess():
    images = torch.zeros(2, 3, 8, 10)
    images[0, :, 2, 7] = 1.0
    images[1, :, 5, 1] = 0.2
    found = BrightestPixel().detect(images, threshold=0.5)
    assert len(found[0].boxes) == 1 and found[0].boxes[0].tolist() == [7.0, 2.0, 8.0, 3.0]
    assert found[0].names == ["light"] and len(found[1].boxes) == 0  # below the threshold
    with pytest.raises(NotImplementedError, match="training loss"):
        BrightestPixel().loss({}, [])


# -- conditioning ------------------------------------------------------------------------------------------------


class Parity(Conditioner):
    """``parity="even"`` or ``"odd"`` -> a random class of that parity per sample; uncond: the null label -1."""

    inputs = ("parity",)

    def forward(self, n: int, parity: str = "even"):
        labels = torch.arange(n) * 2 % 8 + (parity == "odd")
        return {"class_labels": labels}, {"class_labels": torch.full((n,), -1)}


@pytest.mark.parametrize("conditioner, inputs, wanted", [
    (ClassConditioner(8, null_label=-1, id2label={i: f"mode {i}" for i in range(8)}), {"labels": "mode 3"}, {3}),
    (ClassConditioner(8, null_label=-1), {"labels": [1, 5, 1, 5]}, {1, 5}),
    (Parity(), {"parity": "odd"}, {1, 3, 5, 7}),
])
def test_conditioner_slot_turns_user_words_into_cond_and_uncond(conditioner, inputs, wanted):
    gmm = ring()
    pipe = DiffusionPipeline(GMMDenoiser(gmm, "eps"), gmm.shape, conditioner=conditioner, default_sampler="dpmpp-2m")
    x = pipe.sample(4, steps=20, guidance_scale=2.0, output="raw", progress=False,
                    generator=torch.Generator().manual_seed(0), **inputs)
    modes = (x.reshape(4, 2).double() @ gmm.means.reshape(8, 2).T).argmax(1)  # nearest mode on the ring
    assert set(modes.tolist()) <= wanted
    with pytest.raises(ValueError, match="not both"):
        pipe.sample(1, steps=2, cond={"class_labels": torch.tensor([0])}, progress=False, **inputs)


def test_an_unconditional_pipeline_still_samples_the_mixture():
    gmm = ring()
    pipe = DiffusionPipeline(GMMDenoiser(gmm, "eps"), gmm.shape, default_sampler="dpmpp-2m")
    x = pipe.sample(2048, steps=20, output="raw", progress=False, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, gmm) < 0.05
    assert isinstance(pipe, Pipeline)


# -- create checks the declared contract -------------------------------------------------------------------------


def _plugin_building(interface: str, obj_factory):
    class Plugin:
        @hookimpl
        def zoo_models(self, register):
            register(ModelEntry(name="contract-test", family="test", interface=interface,
                                build=lambda entry, files, *, device, dtype: obj_factory()))
    return Plugin()


@pytest.mark.parametrize("interface, factory, ok", [
    ("encoder", MeanColour, True),
    ("encoder", lambda: nn.Linear(2, 2), False),        # a module of the wrong kind altogether
    ("classifier", MeanColour, False),                   # an Encoder, but no classifier
    ("image-text", MeanColour, False),                   # image-text needs TextEncoder too
    ("text-encoder", Bytes, True),
    ("autoencoder", AveragePool, True),
    ("flow", Affine, True),
    ("detector", BrightestPixel, True),
])
def test_create_refuses_an_object_that_breaks_its_declared_contract(use_registry, interface, factory, ok):
    use_registry(_plugin_building(interface, factory))
    if ok:
        assert isinstance(zoo.create("contract-test", pretrained=False, device="cpu"), INTERFACES[interface])
    else:
        with pytest.raises(ContractError, match=f"interface '{interface}'") as err:
            zoo.create("contract-test", pretrained=False, device="cpu")
        assert isinstance(err.value, ZooError) and isinstance(err.value, TypeError)


def test_an_abstract_method_replaced_by_a_non_callable_is_refused():
    enc = MeanColour()
    enc.encode = None
    with pytest.raises(ContractError, match="encode is not callable"):
        check_contract(enc, "encoder")


def test_an_entry_with_an_unknown_interface_is_a_plugin_failure():
    from zoo.registry import build_registry

    reg = build_registry((_plugin_building("clip", MeanColour),), entry_points=False)
    assert "contract-test" not in reg.models and "no zoo contract" in next(iter(reg.failures.values()))


# -- the denoiser's time variable keeps the model's precision ----------------------------------------------------


@pytest.mark.parametrize("dtype, time_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float32)])
def test_denoise_feeds_t_in_the_models_precision(dtype, time_dtype):
    """A float64 continuous-time model sees sigma unrounded (before: t always went through float32)."""
    from zoo.registry import Denoiser, EDMSchedule

    class RecordsT(Denoiser):
        prediction, schedule = "x0", EDMSchedule()

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones((), dtype=dtype))
            self.seen: list[Tensor] = []

        def forward(self, x_t, t, **cond):
            self.seen.append(t)
            return x_t * self.w

    model = RecordsT()
    sigma = torch.tensor(0.1 + 1e-12, dtype=torch.float64)
    model.denoise(torch.zeros(2, 1, 1, 1, dtype=dtype), sigma)
    (t,) = model.seen
    assert t.dtype == time_dtype and t.shape == (2,)
    assert (float(t[0]) == float(sigma)) == (time_dtype == torch.float64)
