"""checks.py: a split no test proves exact compares itself with the model on its first batch, and refuses."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from torch import nn

import layer_recycling as lr
from conftest import LABELS, LAYERS, cnn_model, text_examples
from helpers import max_diff, padded_batch


def _megatron() -> nn.Module:
    torch.manual_seed(0)
    config = T.MegatronBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)
    return T.MegatronBertForSequenceClassification(config).eval()


def test_an_override_split_that_misses_a_final_norm_refuses_itself():
    model = _megatron()  # its encoder applies a LayerNorm after the block list: the bottom would apply it too
    rec = lr.recycle(model, at=2, blocks="encoder.layer").eval()
    words = r"MegatronBert.*blocks= override.*max abs diff .* in logits.*check_split=False"
    with pytest.raises(ValueError, match=words):
        rec.fill(text_examples(), progress=False)
    with pytest.raises(ValueError, match="max abs diff"):  # the refusal stands: serving refuses too
        rec(**padded_batch(text_examples()))
    assert len(rec.store) == 0


def test_a_correct_generic_split_checks_itself_once_and_silently():
    model = cnn_model()
    rec = lr.recycle(model, at=2)  # train mode: the check compares in eval mode, then restores the modes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec.fill([(x, 0) for x in torch.randn(6, 3, 8, 8)], batch_size=4, progress=False)
    assert not rec.bottom._forward_pre_hooks and rec.stats.bottom_examples == 6  # removed after the first batch
    assert rec.top.training and not model.training and not rec.bottom.training


def test_table_splits_do_not_run_the_check(bert):
    rec = lr.recycle(bert, at=2)
    assert not rec.bottom._forward_pre_hooks


@pytest.mark.parametrize("head", ["Model", "ForSequenceClassification", "ForTokenClassification"])
def test_a_correct_override_split_passes_its_check_and_serves_exactly(head):
    torch.manual_seed(0)
    config = T.ErnieConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)
    model = getattr(T, "Ernie" + head)(config).eval()  # not in the table: its block list is named by hand
    rec = lr.recycle(model, at=2, blocks="encoder.layer").eval()
    rec.fill(text_examples(), batch_size=4, progress=False)
    batch = padded_batch(text_examples())
    with torch.no_grad():
        assert max_diff(model(**batch), rec(**batch), batch["attention_mask"]) <= 1e-5
    assert not rec.bottom._forward_pre_hooks


def test_the_check_compares_an_untied_head_with_its_own_copy():
    class TiedNet(nn.Module):  # a generic model whose head is tied to its stem: the split checks itself
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 4, bias=False)
            self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(4)])
            self.head = nn.Linear(4, 4, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.blocks(self.embed(x)))

    torch.manual_seed(0)
    model = TiedNet().eval()
    with pytest.warns(UserWarning, match=r"head\.weight \(= embed\.weight\)"):
        lr.recycle(model, at=2)
    rec = lr.recycle(model, at=2, untie=True)
    with torch.no_grad():
        rec.top.model.head.weight.add_(1.0)  # the top trained before the bottom's first batch
    rec.fill([(x, 0) for x in torch.randn(4, 4)], progress=False)  # no refusal: the check uses the copy
    assert not rec.bottom._forward_pre_hooks
