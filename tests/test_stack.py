"""Stacked fills: a lower level's store feeds a higher level's fill; only the blocks between them run."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from conftest import LAYERS, cnn_model, text_examples, text_model

FAMILIES = [("bert", "ForSequenceClassification"), ("deberta-v2", "ForSequenceClassification"),
            ("gpt2", "LMHeadModel"), ("llama", "ForCausalLM"), ("mpnet", "ForSequenceClassification")]


def _count_block_calls(blocks) -> list[int]:
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def _blocks(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers if hasattr(base, "layers") else base.encoder.layer


@pytest.mark.parametrize("family, head", FAMILIES)
@pytest.mark.parametrize("j, k", [(0, 2), (1, 3), (2, LAYERS)])
def test_a_stacked_fill_equals_a_fill_from_scratch_and_runs_only_the_upper_blocks(family, head, j, k):
    model, examples = text_model(family, head), text_examples(7)
    lower = lr.recycle(model, at=j)
    lower.fill(examples, batch_size=3, progress=False)
    calls = _count_block_calls(_blocks(model))
    stacked = lr.recycle(model, at=k)
    assert stacked.fill(examples, batch_size=3, progress=False, start_from=lower) == 7
    assert [c > 0 for c in calls] == [j <= i < k for i in range(LAYERS)]  # blocks below j never ran
    scratch = lr.recycle(model, at=k)
    scratch.fill(examples, batch_size=4, progress=False)
    keys = list(scratch.store)
    for a, b in zip(stacked.store.get_many(keys), scratch.store.get_many(keys)):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5


def test_a_generic_model_stacks_too():
    model, x = cnn_model(), torch.randn(5, 3, 8, 8)
    examples = [(xi, 0) for xi in x]
    lower = lr.recycle(model, at=1)
    lower.fill(examples, progress=False)
    stacked, scratch = lr.recycle(model, at=3), lr.recycle(model, at=3)
    stacked.fill(examples, progress=False, start_from=lower)
    scratch.fill(examples, progress=False)
    keys = list(scratch.store)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stacked.store.get_many(keys), scratch.store.get_many(keys)))


def test_the_lower_store_is_filled_first_where_it_lacks_examples():
    model, examples = text_model("bert", "ForSequenceClassification"), text_examples(6)
    lower = lr.recycle(model, at=1)
    lower.fill(examples[:2], progress=False)
    lr.recycle(model, at=3).fill(examples, progress=False, start_from=lower)
    assert len(lower.store) == 6


def test_another_bottom_a_lossy_store_or_a_higher_level_is_refused():
    model, examples = text_model("bert", "ForSequenceClassification"), text_examples(4)
    other = text_model("bert", "ForSequenceClassification", seed=1)
    with pytest.raises(lr.FingerprintMismatch, match="weights differ"):
        lr.recycle(model, at=3).fill(examples, progress=False, start_from=lr.recycle(other, at=1))
    half = lr.recycle(model, at=1, store=lr.MemoryStore(codec="float16"))
    with pytest.raises(ValueError, match="needs exact states"):
        lr.recycle(model, at=3).fill(examples, progress=False, start_from=half)
    with pytest.raises(ValueError, match="start from a lower level"):
        lr.recycle(model, at=2).fill(examples, progress=False, start_from=lr.recycle(model, at=2))


def test_a_stacked_fill_runs_its_blocks_under_the_levels_autocast_and_refuses_another():
    """The blocks between the levels ran without autocast: entries 2.3e-4 off a direct bfloat16 fill, and
    ``verify`` flagged them. Now equal to a direct fill; a lower level of another autocast is refused."""
    model = text_model("bert", "ForSequenceClassification")
    examples = text_examples(8)
    lower = lr.recycle(model, at=1, store=lr.MemoryStore(codec="float32"), autocast="bfloat16")
    stacked = lr.recycle(model, at=3, autocast="bfloat16")
    stacked.fill(examples, start_from=lower, progress=False)
    direct = lr.recycle(model, at=3, autocast="bfloat16")
    direct.fill(examples, progress=False)
    keys = [direct.encode(e)[0] for e in examples]
    assert all(torch.equal(a, b) for a, b in zip(stacked.store.get_many(keys), direct.store.get_many(keys)))
    with pytest.raises(ValueError, match=r"under autocast='bfloat16', this level's bottom runs under "
                                         r"autocast=None"):
        lr.recycle(model, at=3).fill(examples, start_from=lower, progress=False)
