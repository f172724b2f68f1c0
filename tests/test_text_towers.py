"""CLIP's text tower pools a token found in input_ids: the bottom marks it, every codec keeps the mark, the top
pools it as the model alone does (both of CLIP's rules); SigLIP pools each row's last real token."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import layer_recycling as lr
from layer_recycling.text_towers import clip_pooled_index
from families import LAYERS, alone, padded, worst

EOS = 7


def _clip(eos: int = EOS, head: str = "Model"):
    torch.manual_seed(0)
    config = T.CLIPTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                              intermediate_size=37, max_position_embeddings=64, projection_dim=8, pad_token_id=0,
                              bos_token_id=1, eos_token_id=eos)
    return getattr(T, f"CLIPText{head}")(config).eval()


def _rows() -> list[dict[str, torch.Tensor]]:
    """The end-of-text id mid-row, twice (the first is pooled), last, and absent (token 0 is pooled)."""
    return [{"input_ids": torch.tensor(ids)} for ids in
            ([5, 9, EOS, 4, 8], [11, 12, 13, EOS, 14, 15, 16, 17, EOS], [20, 21, 22], [30, 31, 32, 33, EOS])]


@pytest.mark.parametrize("head", ["Model", "ModelWithProjection"])
@pytest.mark.parametrize("at", [1, pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow),
                                pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)])
def test_clip_pools_the_first_end_of_text_token_wherever_it_is(head, at):
    model, rows = _clip(head=head), _rows()
    want = alone(model, rows)
    rec = lr.recycle(model, at=at).eval()
    for side in ("right", "left"):
        batch = padded(rows, side, 0)
        with torch.no_grad():
            missed, hit = rec(**batch), rec(**batch)
        assert worst(want, batch, missed) <= 1e-5 and worst(want, batch, hit) <= 1e-5, side
    assert rec.stats.misses == len(rows) and rec.stats.hits == 3 * len(rows)


def test_the_pooled_index_is_the_models_rule_on_real_tokens_only():
    ids = torch.tensor([[5, EOS, 4, EOS, 0], [3, 4, 0, 0, 0], [9, 0, 0, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [2], [1]])).long()
    assert clip_pooled_index(ids, mask, EOS).tolist() == [1, 0, 0]  # no end-of-text: the model pools token 0
    # eos 2 (older configs): the first largest id among the real tokens, never a padding id above them
    ids = torch.tensor([[5, 9, 9, 1], [3, 4, 98, 98]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert clip_pooled_index(ids, mask, 2).tolist() == [1, 1]


@pytest.mark.parametrize("codec", ["float16", "bfloat16", "int8"])
def test_every_codec_keeps_the_mark_of_the_pooled_token_exactly(codec):
    """The mark is its row's largest magnitude plus one: int8 keeps it among the 4 it stores exactly, the half
    floats keep it non-zero. Pooled at another token, the output would move by far more than the codec's error."""
    model, rows = _clip(), _rows()
    exact = lr.recycle(model, at=2)
    coded = lr.recycle(model, at=2, store=lr.MemoryStore(codec=codec))
    exact.fill(rows, progress=False), coded.fill(rows, progress=False)
    keys = [exact.encode(r)[0] for r in rows]
    for want, got in zip(exact.store.get_many(keys), coded.store.get_many(keys)):
        assert torch.equal(got[:, -1] != 0, want[:, -1] != 0) and int((want[:, -1] != 0).sum()) == 1
    with torch.no_grad():
        want, got = exact.predict(rows, progress=False), coded.predict(rows, progress=False)
    for w, g in zip(want, got):
        assert float((w["pooler_output"] - g["pooler_output"]).abs().max()) <= 0.05


def test_a_clip_text_config_without_an_integer_eos_is_refused_saying_what_to_set():
    model = _clip()
    model.config.eos_token_id = None
    with pytest.raises(ValueError, match=r"eos_token_id is None: CLIP's text model pools the end-of-text token"):
        lr.recycle(model, at=2)


def test_siglip_pools_each_rows_last_real_token_as_the_example_alone():
    """SigLIP's model reads the batch's last column (padding, for a short row); recycled, each row gets what the
    example gives alone, whichever side the caller padded."""
    torch.manual_seed(0)
    model = T.SiglipTextModel(T.SiglipTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS,
                                                 num_attention_heads=2, intermediate_size=37, projection_size=8,
                                                 max_position_embeddings=64)).eval()
    rows = _rows()
    rec = lr.recycle(model, at=2).eval()
    for side in ("right", "left"):
        batch = padded(rows, side, 0)
        with torch.no_grad():
            assert worst(alone(model, rows), batch, rec(**batch)) <= 1e-5, side
            assert isinstance(rec(**batch, return_dict=False), tuple)
