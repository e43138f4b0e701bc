"""zoo.metrics against the reference implementations: pytorch-fid's calculate_frechet_distance and
torchmetrics' KID kernel (both test-only), plus a direct O(n^2) MMD written here."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from zoo import metrics
from zoo.registry.errors import InvalidInputError

fid_score = pytest.importorskip("pytorch_fid.fid_score")


def _features(seed: int, n: int = 300, d: int = 16, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(d).normal(size=(d, d)) / np.sqrt(d)  # correlated features, as real ones are
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.5, 1.0), (0.1, 2.0), (3.0, 0.3)])
def test_frechet_distance_equals_pytorch_fid(shift, scale):
    a, b = _features(0), _features(1, n=250, shift=shift, scale=scale)
    mu1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
    want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    got = metrics.frechet_distance(a, b)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    # (mu, sigma) pairs, float32 tensors and mixtures of both give the same number
    assert metrics.frechet_distance((mu1, s1), (mu2, s2)) == pytest.approx(want, rel=1e-6, abs=1e-9)
    ta = torch.from_numpy(a).float()
    assert metrics.frechet_distance(ta, (mu2, s2)) == pytest.approx(
        fid_score.calculate_frechet_distance(*metrics.statistics(ta.double().numpy()), mu2, s2), rel=1e-6)


def test_frechet_distance_properties():
    a = _features(0)
    assert abs(metrics.frechet_distance(a, a)) < 1e-8
    # a pure shift of the mean adds exactly ||delta||^2
    delta = np.full(a.shape[1], 0.25)
    assert metrics.frechet_distance(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    near, far = _features(1, shift=0.1), _features(2, shift=1.0)
    assert metrics.frechet_distance(a, near) < metrics.frechet_distance(a, far)


def test_rank_deficient_covariances_match_pytorch_fid():
    # fewer samples than dimensions: rank-deficient covariances (scipy's sqrtm copes with them today)
    a, b = _features(0, n=8, d=32), _features(1, n=8, d=32, shift=0.3)
    stats_a, stats_b = metrics.statistics(a), metrics.statistics(b)
    want = fid_score.calculate_frechet_distance(*stats_a, *stats_b)
    got = metrics.frechet_distance(stats_a, stats_b)
    assert np.isfinite(got)
    assert got == pytest.approx(want, rel=1e-6)


def test_singular_product_takes_pytorch_fids_offset(monkeypatch):
    """When sqrtm fails (non-finite result), both add eps * I to the covariances and retry: the same number."""
    from scipy import linalg

    real_sqrtm = linalg.sqrtm

    def failing_first(matrix, *args, **kwargs):
        failing_first.calls += 1
        out = real_sqrtm(matrix)
        if failing_first.calls % 2 == 1:  # every first attempt of a distance "fails"
            out = np.full_like(out, np.nan)
        return (out, 0.0) if kwargs.get("disp") is False else out

    failing_first.calls = 0
    monkeypatch.setattr(linalg, "sqrtm", failing_first)
    stats_a, stats_b = metrics.statistics(_features(0, n=50)), metrics.statistics(_features(1, n=50, shift=0.3))
    want = fid_score.calculate_frechet_distance(*stats_a, *stats_b, eps=1e-2)
    with pytest.warns(RuntimeWarning, match="singular"):
        got = metrics.frechet_distance(stats_a, stats_b, eps=1e-2)
    assert failing_first.calls == 4
    assert got == pytest.approx(want, rel=1e-6)
    # and the offset is what made the number: without it the distance differs
    monkeypatch.setattr(linalg, "sqrtm", real_sqrtm)
    assert abs(metrics.frechet_distance(stats_a, stats_b) - got) > 1e-3


def test_not_a_covariance_is_refused():
    d = 4
    mu = np.zeros(d)
    bad = -np.eye(d)  # negative definite: sqrt of the product is imaginary
    with pytest.raises(InvalidInputError, match="imaginary"):
        metrics.frechet_distance((mu, np.eye(d)), (mu, bad))
    with pytest.raises(InvalidInputError, match="different dimensions"):
        metrics.frechet_distance(_features(0, d=4), _features(0, d=5))
    with pytest.raises(InvalidInputError, match=r"\(N, D\)"):
        metrics.statistics(np.zeros(10))
    with pytest.raises(InvalidInputError, match="NaN"):
        metrics.statistics(np.full((3, 2), np.nan))


def test_statistics_round_trip_in_pytorch_fids_npz(tmp_path):
    a, b = _features(0), _features(1, shift=0.2)
    path = metrics.save_statistics(tmp_path / "ref.npz", a)
    with np.load(path) as f:  # the layout pytorch-fid reads: arrays mu and sigma
        assert sorted(f.files) == ["mu", "sigma"]
        np.testing.assert_array_equal(f["mu"], a.mean(0))
        np.testing.assert_allclose(f["sigma"], np.cov(a, rowvar=False), rtol=1e-12)
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed away
    assert metrics.frechet_distance(b, path) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-12)
    # a file written by pytorch-fid's own save layout (np.savez_compressed(mu=, sigma=)) loads too
    np.savez_compressed(tmp_path / "theirs.npz", mu=b.mean(0), sigma=np.cov(b, rowvar=False))
    assert metrics.frechet_distance(str(tmp_path / "theirs.npz"), path) == pytest.approx(
        metrics.frechet_distance(b, a), rel=1e-12)
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match="'mu' and 'sigma'"):
        metrics.load_statistics(tmp_path / "images.npz")


def _mmd2_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel, written out as the double sums of Bińkowski et al. (eq. 3)."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_equals_direct_sums_and_torchmetrics():
    x, y = _features(0, n=25, d=8), _features(1, n=18, d=8, shift=0.3)  # unequal sizes
    assert metrics.mmd2_polynomial(x, y) == pytest.approx(_mmd2_direct(x, y), rel=1e-9)
    kid_module = pytest.importorskip("torchmetrics.image.kid")  # takes equal sizes
    y = _features(1, n=25, d=8, shift=0.3)
    want = float(kid_module.poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    assert metrics.mmd2_polynomial(x, y) == pytest.approx(want, rel=1e-9)


def test_kid_mean_and_std_over_subsets():
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    a, b = _features(0, n=200), _features(1, n=150, shift=0.4)
    # one subset as large as the smaller set: KID is the full-sample unbiased MMD^2, whatever the draw of b's rows
    mean, std = metrics.kid(a[:150], b, subsets=1, subset_size=150)
    assert mean == pytest.approx(float(kid_module.poly_mmd(torch.from_numpy(a[:150]), torch.from_numpy(b))), rel=1e-9)
    assert std == 0.0
    # subsets: the mean of the per-subset values torchmetrics computes on the same rows
    rng = np.random.default_rng(7)
    values = [float(kid_module.poly_mmd(torch.from_numpy(a[rng.choice(200, 50, replace=False)]),
                                        torch.from_numpy(b[rng.choice(150, 50, replace=False)])))
              for _ in range(20)]
    mean, std = metrics.kid(a, b, subsets=20, subset_size=50, seed=7)
    assert mean == pytest.approx(np.mean(values), rel=1e-9)
    assert std == pytest.approx(np.std(values), rel=1e-9)
    # unbiased: two draws of the same distribution average near 0, a shifted one clearly above
    same, _ = metrics.kid(_features(2, n=400), _features(3, n=400), subsets=20, subset_size=100)
    assert abs(same) < mean / 5
    with pytest.raises(InvalidInputError, match="subset_size"):
        metrics.kid(a, b, subset_size=1)


# -- inception-fid: pytorch-fid's FID Inception, on random weights -----------------------------------------------


def _randomised(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the model's names, BatchNorm statistics included (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = torch.randn(value.shape, generator=g) * 0.1
        else:  # conv and fc weights, BatchNorm gains: variance-preserving scale so 2048-d features stay O(1)
            fan_in = value[0].numel() if value.ndim > 1 else 1
            state[key] = torch.randn(value.shape, generator=g) * ((2 / fan_in) ** 0.5 if value.ndim > 1 else 1.0)
    return state


def test_inception_fid_equals_pytorch_fids_inception_on_random_weights(tmp_path, monkeypatch):
    import pytorch_fid.inception as theirs

    import zoo
    from zoo.plugins.metrics import WEIGHTS_FILE

    torch.set_num_threads(2)
    ours = zoo.create("inception-fid", pretrained=False, device="cpu")
    state = _randomised(ours.model)
    # pytorch-fid builds its FIDInceptionA/C/E network and loads the downloaded file strictly: hand it ours
    monkeypatch.setattr(theirs, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = theirs.InceptionV3([theirs.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).double().eval()
    # the same dict saved as pytorch-fid's weight file loads into zoo's entry strictly, by name
    torch.save(state, tmp_path / WEIGHTS_FILE)
    ours = zoo.create("inception-fid", weights=tmp_path, device="cpu", dtype=torch.float64)

    # uint8 NHWC images (the shards' layout), resized as pytorch-fid resizes its float [0, 1] input
    u8 = (torch.rand(2, 3, 30, 20, generator=torch.Generator().manual_seed(1)) * 255).round().byte()
    with torch.inference_mode():
        want = reference(u8.double() / 255)[0].flatten(1).numpy()
    got = metrics.encoder_features(ours, u8.permute(0, 2, 3, 1).numpy(), batch_size=1)
    assert got.shape == (2, 2048)
    assert np.abs(want).mean() > 1e-3  # the features are not all zero
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    # greyscale is repeated to RGB, as pytorch-fid's loader converts files
    grey = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(ours.preprocess(grey), ours.preprocess(grey.expand(-1, 3, -1, -1)))


# -- judging a generator: ddpm-digits on a digit classifier's features --------------------------------------------


@pytest.fixture(scope="module")
def digit_features():
    """The hidden layer (32 ReLU units) of an MLP digit classifier fitted on the first 1,500 of scikit-learn's
    digits at their own 8x8 resolution, and those features of the 297 digits it did not see (the reference).
    (ddpm-digits itself was trained on all 1,797, so these are held out from the feature extractor only.)"""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.neural_network import MLPClassifier

    digits = sklearn_datasets.load_digits()
    x = digits.images.reshape(-1, 64) / 16.0
    with warnings.catch_warnings():  # it has not fully converged at 300 iterations: accurate enough
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x[:1500], digits.target[:1500])
    assert mlp.score(x[1500:], digits.target[1500:]) > 0.85

    def features(images_u8: np.ndarray) -> np.ndarray:
        """uint8 (N, 16, 16, 1) samples -> (N, 32): averaged down to 8x8, as the digits were upsampled."""
        x8 = torch.nn.functional.avg_pool2d(torch.from_numpy(images_u8).permute(0, 3, 1, 2).double() / 255, 2)
        return np.maximum(x8.reshape(len(x8), 64).numpy() @ mlp.coefs_[0] + mlp.intercepts_[0], 0)

    return features, np.maximum(x[1500:] @ mlp.coefs_[0] + mlp.intercepts_[0], 0)


def test_ddpm_digits_samples_are_far_closer_to_real_digits_than_noise_or_a_corrupted_model(digit_features, tmp_path_factory):
    import zoo
    from zoo.distributed import read_samples, sample_to_dir

    torch.set_num_threads(1)
    features, real = digit_features
    pipe = zoo.create("ddpm-digits", device="cpu")
    distance = {}
    for steps in (3, 10):
        out = tmp_path_factory.mktemp(f"steps{steps}")
        sample_to_dir(pipe, 200, out, seed=0, batch_size=100, shard_size=100, steps=steps, progress=False)
        distance[steps] = metrics.frechet_distance(features(read_samples(out)), real)
    noise = np.random.default_rng(0).integers(0, 256, (200, 16, 16, 1), dtype=np.uint8)
    distance["noise"] = metrics.frechet_distance(features(noise), real)
    # a corrupted model: every weight tensor perturbed by half its own standard deviation
    corrupted = zoo.create("ddpm-digits", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in corrupted.denoiser.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std())
    out_bad = tmp_path_factory.mktemp("corrupted")
    sample_to_dir(corrupted, 200, out_bad, seed=0, batch_size=100, shard_size=100, steps=10, progress=False)
    distance["corrupted"] = metrics.frechet_distance(features(read_samples(out_bad)), real)
    # measured (200 samples): 10 steps 3.7, 3 steps 7.0, corrupted 15.9, noise 43 (real training digits: 1.2)
    assert distance[10] < distance["noise"] / 5
    assert distance[10] < distance["corrupted"] / 3
    assert distance[10] < distance[3] < distance["noise"]
    kid_samples, _ = metrics.kid(features(read_samples(out)), real, subsets=20, subset_size=150)
    kid_noise, _ = metrics.kid(features(noise), real, subsets=20, subset_size=150)
    assert kid_samples < kid_noise / 5


def test_zoo_fid_command_reads_sample_folders_image_folders_and_stats(tmp_path, capsys):
    from PIL import Image

    import zoo
    from zoo.cli import main
    from zoo.distributed import read_samples, sample_to_dir

    torch.set_num_threads(1)
    samples = tmp_path / "samples"
    sample_to_dir("ddpm-digits", 24, samples, seed=0, batch_size=12, shard_size=12, steps=3, device="cpu",
                  progress=False)
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(ref / f"{i:02d}.png")

    code = main(["fid", str(samples), "--ref", str(ref), "--encoder", "toy-mlp", "--device", "cpu",
                 "--save-ref-stats", str(tmp_path / "ref.npz"), "--kid-subset-size", "10", "--kid-subsets", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    encoder = zoo.create("toy-mlp", device="cpu")
    files = sorted(ref.glob("*.png"))
    want = metrics.frechet_distance(metrics.encoder_features(encoder, read_samples(samples)),
                                    metrics.encoder_features(encoder, [str(f) for f in files]))
    printed = float(out.split("frechet distance (toy-mlp): ")[1].split()[0])
    assert printed == pytest.approx(want, rel=1e-5)
    assert "kid (toy-mlp):" in out
    # the saved reference statistics stand in for the folder; a shard stands for its images
    code = main(["fid", str(samples), "--ref", str(tmp_path / "ref.npz"), "--encoder", "toy-mlp", "--device", "cpu"])
    again = capsys.readouterr().out
    assert code == 0 and float(again.split("toy-mlp): ")[1].split()[0]) == pytest.approx(want, rel=1e-5)
    assert "kid" not in again  # statistics hold no features to take subsets of
    assert main(["fid", str(tmp_path / "nothing.npz"), "--ref", str(ref)]) == 2
    assert "not a sample folder" in capsys.readouterr().err
