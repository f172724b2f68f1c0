"""Swin's and data2vec-vision's hand-built halves on what the families protocol does not show: images of sizes other
than the config's (Swin's stored feature maps carry their own size), and data2vec-vision's refusal of them."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import layer_recycling as lr
from families import alone, build, padded, worst

TOL = 1e-5


def _images(sizes: list[tuple[int, int]], seed: int = 1) -> list[list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    return [[{"pixel_values": torch.randn(3, h, w, generator=g)} for _ in range(2)] for h, w in sizes]


SHAPES = {1: (8, 9, 7), 3: (16, 5, 4)}  # the stored map of an 18 x 14 image: (d, h, w), before and after a merge


@pytest.mark.parametrize("case, at", [("swin", 1), ("swinv2", 3), pytest.param("swin", 3, marks=pytest.mark.slow),
                                      pytest.param("swinv2", 1, marks=pytest.mark.slow)])
def test_swin_serves_images_of_any_size_from_their_feature_maps(case, at):
    """Non-square images, and an odd patch grid (9 x 7) that a patch merging pads: the top's stages get the size
    from the stored map's shape, and each row equals its image run alone (misses, then hits). At 1 and 3 a stage
    is cut inside, so its merging runs in the top."""
    model = build(case, "Model")
    rec = lr.recycle(model, at=at).eval()
    for rows in _images([(16, 24), (18, 14)]):
        batch = padded(rows, "right")
        with torch.no_grad():
            assert worst(alone(model, rows), batch, rec(**batch)) <= TOL
            assert worst(alone(model, rows), batch, rec(**batch)) <= TOL
    assert rec.store.get_many([rec.encode(rows[0])[0]])[0].shape == SHAPES[at]


@pytest.mark.parametrize("case", ["data2vec-vision", "beit"])
def test_a_relative_position_bias_refuses_an_image_whose_patch_grid_the_config_does_not_give(case):
    """Above the split the relative position bias is sized from the config (16 pixels, patches of 4: a 4 x 4 grid):
    a 17 x 19 image has that grid too and is exact; a 20 x 16 image is refused before anything is stored."""
    model = build(case, "Model")
    rec = lr.recycle(model, at=2).eval()
    same, other = _images([(17, 19), (20, 16)])
    with torch.no_grad():
        assert worst(alone(model, same), padded(same, "right"), rec(**padded(same, "right"))) <= TOL
        with pytest.raises(ValueError, match=r"an image of 20x16 pixels gives a patch grid of 5x4; recycled, "
                                             rf"{type(model).__name__} serves images of its config's grid 4x4"):
            rec(**padded(other, "right"))
    assert rec.stats.misses == len(same)


_SWIN = dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2)
_D2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=16,
            patch_size=4)
OTHER_HEADS = {  # heads that read more than the last block's states: name -> a tiny one
    "SwinForMaskedImageModeling": lambda: T.SwinForMaskedImageModeling(T.SwinConfig(**_SWIN)),
    "SwinBackbone": lambda: T.SwinBackbone(T.SwinConfig(**_SWIN, out_features=["stage1", "stage2"])),
    "Data2VecVisionForSemanticSegmentation": lambda: T.Data2VecVisionForSemanticSegmentation(
        T.Data2VecVisionConfig(**_D2V, out_indices=[1, 2, 2, 2])),
}


@pytest.mark.parametrize("name", OTHER_HEADS)
def test_a_head_that_reads_other_states_than_the_last_blocks_is_refused_by_name(name):
    with pytest.raises(ValueError, match=rf"{name} is refused: it reads more than the last block's states .* "
                                         rf"Recycle \w+Model or \w+ForImageClassification"):
        lr.recycle(OTHER_HEADS[name](), at=1)


def test_a_bias_shared_by_all_blocks_of_beit_is_refused_saying_which_beit_is_served():
    config = T.BeitConfig(**_D2V, use_shared_relative_position_bias=True)
    with pytest.raises(ValueError, match=r"BeitModel with use_shared_relative_position_bias=True is refused: its "
                                         r"forward sizes the bias all blocks share from pixel_values"):
        lr.recycle(T.BeitModel(config), at=1)
