"""Vision models people fine-tune: stage lists count as one block list, and a split that is not exact refuses itself.

torchvision 0.28 (the release for torch 2.13) ships only CUDA-linked wheels, which do not load against the CPU
torch here, and timm imports torchvision: so these are local stand-ins with the real classes' module names and
forward logic (torchvision ResNet / EfficientNet / VisionTransformer, timm ResNet / ConvNeXt / VisionTransformer),
at toy widths. ``test_the_real_packages_split_exactly`` runs the real models where the packages import.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import layer_recycling as lr

# ---- torchvision.models.resnet / timm.models.resnet ---------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, act: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        setattr(self, act if act == "relu" else "act1", nn.ReLU(inplace=True))
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = getattr(self, "relu", None) or self.act1
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(act(self.bn1(self.conv1(x)))))
        out += identity
        return F.relu(out, inplace=True)


def _stages(model: nn.Module, layers: tuple[int, ...], act: str = "relu") -> None:
    inplanes = 8
    for i, n in enumerate(layers):
        planes = 8 * 2 ** min(i, 1)
        blocks = [BasicBlock(inplanes, planes, 1 if i == 0 else 2, act)] + [
            BasicBlock(planes, planes, 1, act) for _ in range(n - 1)]
        setattr(model, f"layer{i + 1}", nn.Sequential(*blocks))
        inplanes = planes


class TorchvisionResNet(nn.Module):
    """torchvision.models.resnet.ResNet: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        _stages(self, layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TimmResNet(nn.Module):
    """timm.models.resnet.ResNet: conv1, bn1, act1, maxpool, layer1..4, global_pool, fc; forward_features/head."""

    def __init__(self, layers=(1, 2, 3, 2), num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        _stages(self, layers, act="act1")
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))  # SelectAdaptivePool2d
        self.fc = nn.Linear(16, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(self.global_pool(x), p=0.0, training=self.training))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- torchvision.models.efficientnet ------------------------------------------------------------------------------


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation: a Sequential subclass of conv, norm, activation."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        super().__init__(*layers, *([nn.SiLU(inplace=True)] if act else []))


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.SiLU(inplace=True), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        mid = cin * expand
        self.block = nn.Sequential(
            Conv2dNormActivation(cin, mid, 1), Conv2dNormActivation(mid, mid, 3, stride, mid),
            SqueezeExcitation(mid, max(1, cin // 4)), Conv2dNormActivation(mid, cout, 1, act=False),
        )
        self.stochastic_depth = nn.Identity()  # StochasticDepth: the identity in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    """torchvision.models.efficientnet.EfficientNet: features = [stem conv, stage lists of MBConv, head conv]."""

    def __init__(self, depths=(1, 2, 2, 3), num_classes: int = 5):
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(3, 8, 3, 2)]
        c = 8
        for i, d in enumerate(depths):
            cout = 8 + 4 * i
            layers.append(nn.Sequential(*[MBConv(c if j == 0 else cout, cout, 2 if j == 0 and i else 1)
                                          for j in range(d)]))
            c = cout
        layers.append(Conv2dNormActivation(c, 4 * c, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(4 * c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ---- timm.models.convnext -----------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))  # timm Mlp
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        x = x.mul(self.gamma).permute(0, 3, 1, 2)
        return self.drop_path(x) + shortcut


class ConvNeXtStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, first: bool):
        super().__init__()
        self.downsample = nn.Identity() if first else nn.Sequential(LayerNorm2d(cin), nn.Conv2d(cin, cout, 2, 2))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    """timm.models.convnext.ConvNeXt: stem, stages (ConvNeXtStage: downsample, blocks), norm_pre, head."""

    __module__, __qualname__ = "timm.models.convnext", "ConvNeXt"

    def __init__(self, depths=(1, 1, 3, 1), num_classes: int = 5):
        super().__init__()
        dims = (8, 12, 16, 20)
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(*[ConvNeXtStage(dims[max(i - 1, 0)], dims[i], d, i == 0)
                                      for i, d in enumerate(depths)])
        self.norm_pre = nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), LayerNorm2d(dims[-1]), nn.Flatten(1),
                                  nn.Linear(dims[-1], num_classes))  # NormMlpClassifierHead

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- timm.models.vision_transformer / torchvision.models.vision_transformer ---------------------------------------


class Block(nn.Module):
    """A pre-norm transformer block: (b, n, d) -> (b, n, d)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm2, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, d: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(3, d, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (b, n, d)


class TimmVisionTransformer(nn.Module):
    """timm.models.vision_transformer.VisionTransformer: _pos_embed concatenates the class token and adds the
    position embedding in forward_features, outside any module; forward_head pools the class token."""

    __module__, __qualname__ = "timm.models.vision_transformer", "VisionTransformer"  # what the table keys on

    def __init__(self, d: int = 16, depth: int = 4, num_patches: int = 16, num_classes: int = 5):
        super().__init__()
        self.global_pool, self.num_prefix_tokens = "token", 1
        self.patch_embed = PatchEmbed(d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.reg_token = None
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, d) * 0.5)
        self.pos_drop, self.patch_drop, self.norm_pre = nn.Dropout(0.0), nn.Identity(), nn.Identity()
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm, self.attn_pool, self.fc_norm, self.head_drop = nn.LayerNorm(d), None, nn.Identity(), nn.Dropout(0.0)
        self.head = nn.Linear(d, num_classes)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        return self.norm(self.blocks(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(self.pool(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ViTLike(TimmVisionTransformer):
    """A ViT outside the table (the issue's case): the generic rule's stem would skip the class token."""

    __module__, __qualname__ = __name__, "ViTLike"


class Encoder(nn.Module):
    def __init__(self, d: int, depth: int, seq: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, d) * 0.5)
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.ln = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionVisionTransformer(nn.Module):
    """torchvision.models.vision_transformer.VisionTransformer: conv_proj, class_token, encoder, heads."""

    __module__, __qualname__ = "torchvision.models.vision_transformer", "VisionTransformer"

    def __init__(self, d: int = 16, depth: int = 4, num_classes: int = 5):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = 16, 4, d
        self.conv_proj = nn.Conv2d(3, d, 4, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, d))
        self.encoder = Encoder(d, depth, 17)
        self.heads = nn.Sequential(nn.Linear(d, num_classes))

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // self.patch_size) * (w // self.patch_size))
        return x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def _built(cls, size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    model.train()
    with torch.no_grad():  # real BatchNorm statistics, then frozen
        model(torch.randn(8, 3, size, size) * 2 + 1)
    return model.eval()


# (model, expected block list, blocks counted): stage lists found by the generic rule; ConvNeXt by its table entry
EXACT = {
    "torchvision-resnet": (TorchvisionResNet, ("layer1", "layer2", "layer3", "layer4"), 8),
    "timm-resnet": (TimmResNet, ("layer1", "layer2", "layer3", "layer4"), 8),
    "torchvision-efficientnet": (EfficientNet, tuple(f"features.{i}" for i in range(1, 5)), 8),
    "timm-convnext": (ConvNeXt, "stages", 6),  # the blocks of its stages (1, 1, 3, 1), not the 4 stages
}


@pytest.mark.parametrize("name", EXACT)
def test_levels_count_the_blocks_of_all_stages(name):
    cls, blocks, count = EXACT[name]
    s = lr.split(_built(cls), 0.5)
    assert s.arch.blocks == blocks and s.num_layers == count and s.at == count // 2


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_vision_splits_equal_the_model_and_pass_their_check(name, frac):
    model, x = _built(EXACT[name][0]), torch.randn(6, 3, 32, 32)
    rec = lr.recycle(model, at=frac).eval()
    rec.fill([(xi, 0) for xi in x], progress=False)  # the self-check runs on this first batch and passes silently
    with torch.no_grad():
        expected, actual = model(x), rec(x)
    assert rec.stats.hits == 6 and not rec.bottom._forward_pre_hooks  # the passed check removed itself
    assert float((expected - actual).abs().max()) <= 1e-5
    _assert_halves_partition(model, rec)


def _assert_halves_partition(model: nn.Module, rec: lr.Recycled) -> None:
    """Every parameter of the model sits in exactly one half, and the top's all train."""
    top, bottom = {id(p) for p in rec.top.parameters()}, {id(p) for p in rec.bottom.parameters()}
    assert top.isdisjoint(bottom) and top | bottom == {id(p) for p in model.parameters()}
    assert all(p.requires_grad for p in rec.top.parameters())


def test_a_list_of_paths_names_stage_lists():
    model, x = _built(TorchvisionResNet), torch.randn(2, 3, 32, 32)
    s = lr.split(model, 3, blocks=["layer1", "layer2", "layer3", "layer4"])
    assert s.num_layers == 8 and len(s.bottom) == 4 + 3  # stem conv1, bn1, relu, maxpool + 3 blocks
    with torch.no_grad():
        assert float((model(x) - s.top(s.bottom(x))).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="consecutive children of one module"):
        lr.split(model, 3, blocks=["layer1", "layer3"])


VITS = {"timm-vit": TimmVisionTransformer, "torchvision-vit": TorchvisionVisionTransformer}


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("at", [0, 1, 2, 4])
def test_vit_table_entries_equal_the_model(name, at):
    model, x = _built(VITS[name], 16), torch.randn(6, 3, 16, 16)
    rec = lr.recycle(model, at=at).eval()
    assert rec.num_layers == 4 and rec.arch.build is not None
    rec.fill([(xi, 0) for xi in x], progress=False)  # checks itself: tested against this stand-in only
    with torch.no_grad():
        assert float((model(x) - rec(x)).abs().max()) <= 1e-5
    assert rec.stats.hits == 6 and not rec.bottom._forward_pre_hooks
    _assert_halves_partition(model, rec)


class TorchvisionViTLike(TorchvisionVisionTransformer):
    __module__, __qualname__ = __name__, "TorchvisionViTLike"


@pytest.mark.parametrize("cls, blocks", [(ViTLike, None), (TorchvisionViTLike, "encoder.layers")])
def test_a_vit_split_outside_the_table_refuses_itself(cls, blocks):
    model, x = _built(cls, 16), torch.randn(6, 3, 16, 16)
    rec = lr.recycle(model, at=2, blocks=blocks).eval()
    with pytest.raises(ValueError, match=r"(max abs diff|fails).*blocks=.*arch\.TABLE.*check_split=False"):
        rec.fill([(xi, 0) for xi in x], progress=False)
    with pytest.raises(ValueError, match="is not what the model's forward"):  # serving refuses too
        rec(x)
    assert len(rec.store) == 0


def test_a_vit_outside_the_table_with_no_block_list_to_guess_names_the_fix():
    with pytest.raises(ValueError, match="could not find a block list.*blocks="):
        lr.split(_built(TorchvisionViTLike, 16), 2)


def test_the_check_can_be_skipped_for_models_too_large_to_run_twice():
    model, x = _built(ViTLike, 16), torch.randn(4, 3, 16, 16)
    rec = lr.recycle(model, at=2, check_split=False).eval()
    rec.fill([(xi, 0) for xi in x], progress=False)
    with torch.no_grad():
        assert float((model(x) - rec(x)).abs().max()) > 0.1  # what the check exists to catch


REAL = {  # the real packages, where they import (not here: see the module docstring)
    "torchvision-resnet18": ("torchvision.models", lambda m: m.resnet18(num_classes=5), 64),
    "torchvision-efficientnet_b0": ("torchvision.models", lambda m: m.efficientnet_b0(num_classes=5), 64),
    "torchvision-vit": ("torchvision.models", lambda m: m.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5), 32),
    "timm-resnet18": ("timm", lambda m: m.create_model("resnet18", num_classes=5), 64),
    "timm-convnext_atto": ("timm", lambda m: m.create_model("convnext_atto", num_classes=5), 64),
    "timm-vit_tiny": ("timm", lambda m: m.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5), 32),
}


@pytest.mark.parametrize("name", REAL)
def test_the_real_packages_split_exactly(name):
    package, make, size = REAL[name]
    torch.manual_seed(0)
    model, x = make(pytest.importorskip(package)).eval(), torch.randn(4, 3, size, size)
    rec = lr.recycle(model, at=0.5).eval()
    rec.fill([(xi, 0) for xi in x], progress=False)
    with torch.no_grad():
        assert float((model(x) - rec(x)).abs().max()) <= 1e-5
    assert 0 < rec.at < rec.num_layers and rec.num_layers >= 4


def test_a_multiple_choice_head_is_refused_with_what_to_recycle_instead():
    import transformers as T

    config = T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=37)
    with pytest.raises(ValueError, match=r"BertForMultipleChoice is refused: .*\(batch, choices, tokens\).*"
                                         r"BertForSequenceClassification\(num_labels=1\)"):
        lr.recycle(T.BertForMultipleChoice(config), at=1)


def test_a_transformers_model_takes_one_block_path(bert):
    with pytest.raises(ValueError, match="has one block list"):
        lr.recycle(bert, at=2, blocks=["encoder.layer", "encoder.layer"])
