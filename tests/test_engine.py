"""The inference engine: device resolution, chunked vocabulary scoring, per-image failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import synth
import torch

from zstag.backbones.small import SmallBackbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.engine import engine as engine_module
from zstag.engine.engine import Engine, resolve_device
from zstag.methods.fast0tag import Fast0Tag

N_LABELS, DIM, SIZE = 10, 8, 32


@pytest.fixture(scope="module")
def method() -> Fast0Tag:
    return synth.tiny_fast0tag(DIM)


@pytest.fixture(scope="module")
def labels() -> LabelSet:
    return LabelSet([f"label{i}" for i in range(N_LABELS)], synth.random_label_vectors(N_LABELS, DIM, seed=2))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return synth.noise_pngs(tmp_path_factory.mktemp("engine-images"), 3, (SIZE, SIZE))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("engine-bad")
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not a PNG")
    return [garbage, folder / "missing.jpg"]


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus", "unknown device 'bogus'"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("mps", "unsupported device 'mps'"),
        ("meta", "unsupported device 'meta'"),
    ],
)
def test_resolve_device_rejects_unknown_devices(spec, message):
    with pytest.raises(UsageError, match=message):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_resolve_device_cuda_without_cuda(spec):
    with pytest.raises(UsageError, match=f"--device {spec}: CUDA is not available"):
        resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_device_cuda_index_out_of_range():
    with pytest.raises(UsageError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_chunked_scoring_equals_unchunked(method, labels, monkeypatch):
    engine = Engine("cpu", workers=0)
    with torch.no_grad():
        code = method.encode(torch.randn(2, 3, SIZE, SIZE))
    whole = engine.score(method, code, labels)
    calls = []
    original = Fast0Tag.score
    monkeypatch.setattr(Fast0Tag, "score", lambda self, c, ls: calls.append(ls.names) or original(self, c, ls))
    monkeypatch.setattr(engine_module, "LABEL_CHUNK", 3)
    chunked = engine.score(method, code, labels)
    assert calls == [labels.names[0:3], labels.names[3:6], labels.names[6:9], labels.names[9:10]]
    assert chunked.shape == (2, N_LABELS) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_unchunkable_method_is_scored_at_once(method, labels, monkeypatch):
    engine = Engine("cpu", workers=0)
    code = torch.randn(2, DIM)
    calls = []
    original = Fast0Tag.score
    monkeypatch.setattr(Fast0Tag, "score", lambda self, c, ls: calls.append(len(ls)) or original(self, c, ls))
    monkeypatch.setattr(Fast0Tag, "chunkable", False)
    monkeypatch.setattr(engine_module, "LABEL_CHUNK", 3)
    engine.score(method, code, labels)
    assert calls == [N_LABELS]


def run_all(engine: Engine, method, paths, labels):
    batches = list(engine.run(method, paths, labels, SIZE))
    indices = [i for b in batches for i in b.indices]
    scores = torch.cat([b.scores for b in batches]) if batches else torch.zeros(0, len(labels))
    failures = [f for b in batches for f in b.failures]
    return batches, indices, scores, failures


def test_failures_are_reported_and_the_others_keep_their_order(method, labels, images, bad):
    engine = Engine("cpu", batch_size=3, workers=0)
    _, _, alone, _ = run_all(engine, method, images, labels)
    paths = [bad[0], images[0], images[1], bad[1], images[2]]
    batches, indices, scores, failures = run_all(engine, method, paths, labels)
    assert len(batches) == 2
    assert indices == [1, 2, 4]
    torch.testing.assert_close(scores, alone, rtol=1e-5, atol=1e-5)  # each row belongs to its own image
    assert [i for i, _ in failures] == [0, 3]
    reasons = dict(failures)
    assert reasons[0] and reasons[3] and reasons[0] != reasons[3]
    assert "no such file" in reasons[3].lower() or "not found" in reasons[3].lower()


def test_a_batch_made_only_of_failures(method, labels, images, bad):
    engine = Engine("cpu", batch_size=2, workers=0)
    batches, indices, scores, failures = run_all(engine, method, [images[0], images[1], *bad, images[2]], labels)
    assert [b.indices for b in batches] == [[0, 1], [], [4]]
    empty = batches[1]
    assert empty.scores.shape == (0, N_LABELS)
    assert [i for i, _ in empty.failures] == [2, 3]
    assert indices == [0, 1, 4] and scores.shape == (3, N_LABELS)


def test_run_scores_match_direct_scoring(method, labels, images):
    """The engine's decode + normalise path gives what the method gives on the same pixels."""
    from zstag.data.images import decode_image, to_tensor

    engine = Engine("cpu", batch_size=8, workers=0)
    _, indices, scores, failures = run_all(engine, method, images, labels)
    assert indices == [0, 1, 2] and failures == []
    pixels = torch.stack([to_tensor(decode_image(p, SIZE), SIZE) for p in images]).float() / 255
    mean = torch.tensor(method.backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(method.backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = method.score(method.encode((pixels - mean) / std), labels)
    torch.testing.assert_close(scores, direct, rtol=1e-5, atol=1e-5)


def test_label_side_work_is_done_once_per_run_not_per_batch(labels, images, monkeypatch):
    """Engine.run prepares the vocabulary (LESA's W3 v) before the first batch; every batch and
    every label chunk reuses it, and the scores are those of unprepared labels."""
    from zstag.methods.lesa import LESA

    torch.manual_seed(0)
    seen = LabelSet([f"l{i}" for i in range(4)], synth.random_label_vectors(4, DIM, seed=1))
    lesa = LESA(SmallBackbone(), seen, LESA.hyperparameters({"attentions": 3}), embed=None).eval()
    engine = Engine("cpu", batch_size=1, workers=0)
    _, _, expected, _ = run_all(engine, lesa, images, labels)
    projected = []
    original = LESA.classifiers
    monkeypatch.setattr(LESA, "classifiers", lambda self, v: projected.append(len(v)) or original(self, v))
    monkeypatch.setattr(engine_module, "LABEL_CHUNK", 4)
    batches, _, scores, _ = run_all(engine, lesa, images, labels)
    assert len(batches) == 3 and projected == [N_LABELS]
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_folded_batch_norms_give_the_same_scores(labels):
    """Engine.for_inference folds each batch norm into the convolution before it: none is left,
    and the scores are those of the unfolded network (trained-looking statistics, not the
    identity a fresh batch norm would be)."""
    import copy

    from torch import nn

    torch.manual_seed(0)
    seen = LabelSet([f"l{i}" for i in range(4)], synth.random_label_vectors(4, DIM, seed=1))
    method = Fast0Tag(SmallBackbone(), seen, Fast0Tag.hyperparameters({"hidden": 16}), embed=lambda names: None)
    for norm in [m for m in method.modules() if isinstance(m, nn.BatchNorm2d)]:
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-0.2, 0.2)
    reference = copy.deepcopy(method).eval()
    folded = Engine("cpu").for_inference(method)
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference.score(reference.encode(images), labels)
        got = folded.score(folded.encode(images.contiguous(memory_format=torch.channels_last)), labels)
    assert expected.std() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_batch_norms_in_training_mode_are_not_folded():
    from torch import nn

    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
    engine_module.fold_batch_norms(block.train())
    assert isinstance(block[1], nn.BatchNorm2d)
    engine_module.fold_batch_norms(block.eval())
    assert isinstance(block[1], nn.Identity) and isinstance(block[4], nn.ReLU)


def test_compiling_is_on_for_long_cuda_runs_or_when_asked(monkeypatch):
    assert not Engine("cpu").compiles(10**9)
    assert Engine("cpu", compile=True).compiles(1)
    monkeypatch.setattr(engine_module, "resolve_device", lambda spec: torch.device("cuda"))  # no GPU is touched
    assert Engine("cuda").compiles(engine_module.COMPILE_MIN_IMAGES)
    assert not Engine("cuda").compiles(engine_module.COMPILE_MIN_IMAGES - 1)
    # Larger images save more per image for the same compile time: a quarter of the run at twice the size.
    assert Engine("cuda").compiles(engine_module.COMPILE_MIN_IMAGES // 4, 448)
    assert not Engine("cuda").compiles(engine_module.COMPILE_MIN_IMAGES // 4 - 1, 448)
    assert not Engine("cuda", compile=False).compiles(10**9)


def test_compiled_encoder_pads_short_batches_to_one_shape(monkeypatch):
    """The compiled function only ever sees the engine's batch size (a new shape would compile
    again); a short batch's code, a tensor or a dict of them, is cut back to its images."""
    shapes, settings = [], []

    def fake_compile(function, **kwargs):
        settings.append(kwargs)
        return lambda images: shapes.append(tuple(images.shape)) or function(images)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setenv("ZSTAG_COMPILE_MODE", "reduce-overhead")
    monkeypatch.delenv("ZSTAG_COMPILE_BACKEND", raising=False)
    encoder = engine_module.PaddedEncoder(lambda x: {"sum": x.sum(dim=(1, 2, 3)), "first": x[:, 0]}, batch_size=4)
    images = torch.rand(3, 3, 5, 5)
    code = encoder(images)
    assert shapes == [(4, 3, 5, 5)] and code["sum"].shape == (3,) and code["first"].shape == (3, 5, 5)
    torch.testing.assert_close(code["sum"], images.sum(dim=(1, 2, 3)))
    encoder(torch.rand(4, 3, 5, 5))
    assert shapes[-1] == (4, 3, 5, 5)
    assert settings == [{"dynamic": False, "backend": "inductor", "mode": "reduce-overhead"}]


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "device, backend",
    [
        ("cpu", "eager"),  # Dynamo's tracing and guards alone: quick
        pytest.param("cpu", "inductor", marks=pytest.mark.slow),  # generated kernels: a minute or more on 2 busy cores
        pytest.param("cuda", "inductor", marks=CUDA_ONLY),
    ],
)
def test_compiled_scores_equal_eager_scores(labels, images, device, backend, monkeypatch):
    """`compile=True` gives the eager scores, in the same order, with the last batch padded
    (on CUDA both in bf16 autocast, hence the looser tolerance)."""
    monkeypatch.setenv("ZSTAG_COMPILE_BACKEND", backend)
    eager = run_all(Engine(device, batch_size=2, workers=0), synth.tiny_fast0tag(DIM), images, labels)
    method = synth.tiny_fast0tag(DIM)
    compiled = run_all(Engine(device, batch_size=2, workers=0, compile=True), method, images, labels)
    assert isinstance(method.encode, engine_module.PaddedEncoder)
    assert compiled[1] == eager[1] == [0, 1, 2]
    tolerance = 1e-4 if device == "cpu" else 3e-2
    torch.testing.assert_close(compiled[2], eager[2], rtol=tolerance, atol=tolerance)
