"""dual.py: CLIPModel and SiglipModel with each tower recycled on its own store: the model's forward (its contrastive
loss), get_text_features and get_image_features from the stores, training, saving, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

import layer_recycling as lr
from layer_recycling.dual import RecycledDual

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=16,
              patch_size=4)
TOL = 1e-5


def dual_model(family: str = "clip", seed: int = 0):
    torch.manual_seed(seed)
    if family == "clip":
        return T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=8)).eval()
    return T.SiglipModel(T.SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()


def pairs(family: str, n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch of (text, image) pairs, the last text and image repeating the first. CLIP's texts are right-padded
    with a mask; SigLIP's are padded to one length with no mask, as its processor does (its model pools the last
    column, padding or not, so a mask would make each row differ from the model's padded batch by design)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, 7), generator=g)
    images = torch.randn(n, 3, 16, 16, generator=g)
    ids[-1], images[-1] = ids[0], images[0]
    if family == "siglip":
        return {"input_ids": ids, "pixel_values": images}
    mask = (torch.arange(7) < torch.tensor([[7], [5], [3], [7]][:n])).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "pixel_values": images}


def _max_diff(want, got, names=("loss", "logits_per_text", "logits_per_image", "text_embeds", "image_embeds")):
    return max(float((getattr(want, n) - getattr(got, n)).abs().max()) for n in names)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_each_tower_serves_from_its_own_store_as_the_model(family):
    model, batch = dual_model(family), pairs(family)
    with torch.no_grad():
        want = model(**batch, return_loss=True)
        text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        image = model.get_image_features(pixel_values=batch["pixel_values"])
    rec = lr.recycle(model, at=0.5).eval()
    assert isinstance(rec, RecycledDual) and {n: r.at for n, r in rec.towers.items()} == {"text": 2, "image": 2}
    with torch.no_grad():
        missed, hit = rec(**batch, return_loss=True), rec(**batch, return_loss=True)
        text_hit = rec.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        image_hit = rec.get_image_features(pixel_values=batch["pixel_values"])
    assert _max_diff(want, missed) <= TOL and _max_diff(want, hit) <= TOL
    assert float((text.pooler_output - text_hit.pooler_output).abs().max()) <= TOL
    assert float((image.pooler_output - image_hit.pooler_output).abs().max()) <= TOL
    for stats in rec.stats.values():  # 3 distinct texts and images: each bottom ran once, on those
        assert stats.bottom_calls == 1 and stats.bottom_examples == 3 and stats.misses == 4


@pytest.mark.parametrize("family", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_training_from_the_two_stores_matches_the_model_with_the_same_frozen_bottoms(family):
    """Adam on the recycled dual (both stores filled first: no bottom runs while training) and on the plain model
    with the same blocks frozen: the contrastive loss agrees within 1e-5 at every step."""
    model = dual_model(family)
    plain = copy.deepcopy(model)
    rec = lr.recycle(model, at={"text": 2, "image": 1}).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("text_model.", "vision_model.")) for n in frozen)
    for name, p in plain.named_parameters():
        p.requires_grad_(name not in frozen)
    plain.train()
    batches = [pairs(family, seed=s) for s in range(3)]
    assert rec.fill([{k: v[i] for k, v in b.items()} for b in batches for i in range(4)], progress=False) == {
        "text": 9, "image": 9}  # each batch's last pair repeats its first
    ran = {n: s.bottom_calls for n, s in rec.stats.items()}
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (rec, plain)]
    for step in range(4):
        batch = batches[step % 3]
        losses = []
        for m, opt in zip((rec, plain), opts):
            opt.zero_grad()
            loss = m(**batch, return_loss=True).loss
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert abs(losses[0] - losses[1]) <= TOL, f"step {step}: {losses}"
    assert {n: s.bottom_calls for n, s in rec.stats.items()} == ran  # trained from the stores alone
    moved = float((rec.source.logit_scale - dual_model(family).logit_scale).detach().abs())
    assert moved > 1e-3  # logit_scale is part of the trainable top


def test_the_whole_model_saves_in_its_own_names_and_loads_back(tmp_path):
    model = dual_model()
    rec = lr.recycle(model, at=0.5)
    opt = torch.optim.SGD([p for p in rec.parameters() if p.requires_grad], lr=0.1)
    rec(**pairs("clip"), return_loss=True).loss.backward()
    opt.step()
    whole = lr.model_state_dict(rec)
    assert set(whole) == set(model.state_dict())
    rec.save_pretrained(tmp_path / "saved")
    loaded = T.CLIPModel.from_pretrained(tmp_path / "saved").eval()
    rec.eval()
    with torch.no_grad():
        assert _max_diff(loaded(**pairs("clip"), return_loss=True), rec(**pairs("clip"), return_loss=True)) <= TOL
    towers = lr.RecycleConfig.recorded(tmp_path / "saved")["towers"]
    assert towers["text_model"]["at_blocks"] == 2 and towers["vision_model"]["block_path"] == "encoder.layers"
    fresh = lr.recycle(dual_model(), at=0.5)  # the same bottoms, an untrained top
    lr.load_model_state_dict(fresh, whole)
    assert all(torch.equal(fresh.state_dict()[n], t) for n, t in rec.state_dict().items())
    other = lr.recycle(dual_model(), at=0.5)
    other.load_state_dict(rec.state_dict())  # the module's own state dict, as a parent module or trainer saves it
    with pytest.raises(RuntimeError, match=r"holds other weights for the frozen bottom"):
        lr.load_model_state_dict(fresh, lr.model_state_dict(lr.recycle(dual_model(seed=5), at=0.5)))


def test_every_dual_family_is_run_by_these_tests():
    """The README calls each entry of ``arch.DUALS`` proven by the tests: these, parametrized over both."""
    from layer_recycling import arch

    assert set(arch.DUALS) == {"clip", "siglip"}


def test_an_example_checks_each_towers_split_at_construction():
    example = {k: v[1] for k, v in pairs("clip").items()}  # a padded text: its mask goes to the text tower
    rec = lr.recycle(dual_model(), at=1, example=example)
    for name, tower in rec.towers.items():
        assert tower.split_check.report.startswith("compared last_hidden_state"), name


def test_each_store_is_bound_to_its_own_towers_fingerprint():
    model = dual_model()
    stores = {"text": lr.MemoryStore(), "image": lr.MemoryStore()}
    lr.recycle(model, at=1, store=stores).fill([{k: v[0] for k, v in pairs("clip").items()}], progress=False)
    with pytest.raises(lr.FingerprintMismatch):
        lr.recycle(model, at=1, store={"text": stores["image"], "image": stores["text"]})


def test_a_dual_model_refuses_one_store_for_two_towers_and_says_how_to_pass_them():
    model = dual_model()
    with pytest.raises(ValueError, match=r"one store \(MemoryStore\) given for a dual model's two towers.*'text'"):
        lr.recycle(model, at=1, store=lr.MemoryStore())
    with pytest.raises(ValueError, match=r"store= names \['image', 'txt'\]; a dual model's towers are"):
        lr.recycle(model, at=1, store={"txt": lr.MemoryStore(), "image": lr.MemoryStore()})
    with pytest.raises(TypeError, match=r"key=.*a dual model takes one for each tower"):
        lr.recycle(model, at=1, key=lambda ex: ex["id"])
    with pytest.raises(ValueError, match=r"\(model type 'clip'\) is refused: the dual text-image model runs two"):
        lr.split(model, 1)
    with pytest.raises(ValueError, match=r"interpolate_pos_encoding=True: the image tower's stored states"):
        lr.recycle(model, at=1).get_image_features(pixel_values=pairs("clip")["pixel_values"],
                                                   interpolate_pos_encoding=True)


def test_the_readme_dual_block_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### Dual text-image models \(CLIP, SigLIP\)\s+```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    batch = pairs("clip")
    namespace = {"lr": lr, "clip": dual_model(), "batch": batch,
                 "pairs": [{k: v[i] for k, v in batch.items()} for i in range(4)]}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["out"].loss is not None and namespace["text"].pooler_output.shape == (4, 8)
    assert {n: s.hits for n, s in namespace["rec"].stats.items()} == {"text": 8, "image": 4}  # forward; text features
    assert (tmp_path / "out" / "clip" / "recycling_config.json").is_file()
