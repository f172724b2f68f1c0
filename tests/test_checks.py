"""The self-check: who runs it (all but proven entries), how tight it is, what it says, and the refusals before it."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import transformers as T
from torch import nn

import layer_recycling as lr
from conftest import LABELS, LAYERS, cnn_model, text_examples
from families import Missing, build, build_found, cohere2, examples
from helpers import max_diff, padded_batch
from layer_recycling import arch


def _megatron() -> nn.Module:
    torch.manual_seed(0)
    config = T.MegatronBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)
    return T.MegatronBertForSequenceClassification(config).eval()


def test_an_override_split_that_misses_a_family_fix_refuses_itself():
    model = build_found("granite", "ForCausalLM")  # forward scales inputs_embeds: the top would scale them twice
    rec = lr.recycle(model, at=2, blocks="layers").eval()
    words = r"Granite.*blocks= override.*max abs diff .* in logits.*check_split=False"
    with pytest.raises(ValueError, match=words):
        rec.fill(text_examples(), progress=False)
    with pytest.raises(ValueError, match="max abs diff"):  # the refusal stands: serving refuses too
        rec(**padded_batch(text_examples()))
    assert len(rec.store) == 0


def test_an_override_puts_a_final_norm_inside_the_encoder_in_the_top():
    """Megatron-BERT applies a LayerNorm after its block list, inside its encoder: the top applies it, not both."""
    model = _megatron()
    rec = lr.recycle(model, at=2, blocks="encoder.layer", example=text_examples()[:4]).eval()
    assert rec.arch.tail == ("encoder.ln",) and "max abs diff" in rec.split_check.report
    batch = padded_batch(text_examples())
    with torch.no_grad():
        assert max_diff(model(**batch), rec(**batch), batch["attention_mask"]) <= 1e-5


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
    longest = max(len(e["input_ids"]) for e in text_examples())  # the fill's first batch: its longest
    assert rec.split_check.error is None and rec.split_check.checked == longest
    assert rec.bottom._forward_pre_hooks  # token sequences: compared again on a batch twice as long


def test_a_split_wrong_only_beyond_a_sliding_window_is_refused_on_the_first_batch_long_enough(monkeypatch):
    """The check compared the first batch only: 3 tokens, inside a window of 3, hid a split that gave the top's
    blocks the wrong attention types (0.82 off on 12 tokens). A batch more than twice as long is compared again."""
    from layer_recycling import halves

    try:
        model = cohere2()
    except Missing as err:
        pytest.skip(str(err))
    monkeypatch.setattr(halves, "shift_layer_types", lambda *a: None)  # the bug this guards against, planted
    rec = lr.recycle(model, at=1, blocks="layers").eval()
    with torch.no_grad():
        rec(input_ids=torch.randint(3, 99, (2, 3)))  # inside the window: compared, and equal
        assert rec.split_check.checked == 3 and rec.split_check.error is None
        rec(input_ids=torch.randint(3, 99, (2, 5)))  # not twice as long: not compared again
        assert rec.split_check.checked == 3
        with pytest.raises(ValueError, match=r"max abs diff .* over the tolerance"):
            rec(input_ids=torch.randint(3, 99, (2, 12)))
        with pytest.raises(ValueError, match="over the tolerance"):  # and from then on
            rec(input_ids=torch.randint(3, 99, (2, 3)))


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




def test_a_user_added_entry_checks_itself_and_a_wrong_one_is_refused_at_construction(monkeypatch):
    """A user's entry is checked, not trusted. The issue's case, Gemma2 as Llama, was 0.29 off at k=1 (its
    alternating sliding window); every split now gives the top its blocks' own layer types, so it passes its
    check. Gemma2 without its final norm in the tail (the bottom's states normed twice) is refused."""
    monkeypatch.setitem(arch.TABLE, "gemma2", dataclasses.replace(arch.TABLE["llama"]))  # a user's copy
    model = build("gemma2", "ForCausalLM")
    checked = lr.recycle(model, at=1, example=examples("gemma2"))
    assert not checked.arch.tested and checked.split_check.report.startswith("compared logits")
    monkeypatch.setitem(arch.TABLE, "gemma2", arch.Arch(blocks="layers"))
    rec = lr.recycle(model, at=1)
    assert not rec.arch.tested and rec.split_check is not None
    with pytest.raises(ValueError, match=r"added outside this library's tests.*compared logits.*max abs diff"):
        lr.recycle(model, at=1, example=examples("gemma2"))
    with pytest.raises(ValueError, match="is not what the model's forward"):  # the first batch refuses too
        rec.fill(examples("gemma2"), progress=False)


def test_the_tolerance_is_absolute_and_catches_a_final_norm_applied_in_the_bottom(monkeypatch):
    """ModernBERT without its tail: the bottom's states carry the final norm, ~1e-4 off on random weights."""
    monkeypatch.setitem(arch.TABLE, "modernbert", arch.Arch(blocks="layers", seam=("embeddings",)))
    model = build("modernbert", "Model")
    with pytest.raises(ValueError, match=r"max abs diff [0-9.e-]+ in last_hidden_state \(tolerance 1e-05, absolute\)"):
        lr.recycle(model, at=2, example=examples("modernbert"))


def test_blocks_override_finds_the_tail_and_says_what_it_compared(monkeypatch):
    """The issue's case, ModernBERT outside the table with blocks='layers': its final norm is the tail now."""
    monkeypatch.delitem(arch.TABLE, "modernbert")
    model = build("modernbert", "Model")
    rec = lr.recycle(model, at=2, blocks="layers", example=examples("modernbert"))
    assert rec.arch.tail == ("final_norm",) and rec.arch.source == "blocks= override"
    assert rec.split_check.report.startswith("compared last_hidden_state (3, 9, 32) of the model with bottom then top")
    assert "max abs diff 0 " in rec.split_check.report and rec.split_check.checked == 9


def test_blocks_override_on_a_decoder_outside_the_table_feeds_inputs_embeds(monkeypatch):
    monkeypatch.delitem(arch.TABLE, "qwen3")  # as a family the table does not know
    model = build("qwen3", "ForTokenClassification")
    with pytest.raises(ValueError, match="'qwen3'.*not in layer_recycling's architecture table.*blocks="):
        arch.lookup(model)  # found only by running it: discover.split
    rec = lr.recycle(model, at=2, blocks="layers", example=examples("qwen3"))
    assert rec.arch.entry == "inputs_embeds" and rec.arch.tail == ("norm",)


def test_blocks_override_names_what_it_looked_for():
    model = T.SEWModel(T.SEWConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                   conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=4,
                                   num_conv_pos_embedding_groups=2, squeeze_factor=1))  # a speech model outside the table
    with pytest.raises(ValueError, match=r"looked for a forward argument 'inputs_embeds'.*'pixel_values'.*"
                                         r"forward takes input_values"):
        lr.recycle(model, at=1, blocks="encoder.layers")
    with pytest.raises(ValueError, match=r"has no child 'layers' \(its children: feature_extractor"):
        lr.recycle(model, at=1, blocks="layers")


@pytest.mark.parametrize("rope", ["dynamic", "longrope"])
def test_length_dependent_rope_is_refused_by_name(rope):
    params = {"rope_type": rope, "factor": 2.0, "rope_theta": 1e4}
    if rope == "longrope":
        params.update(short_factor=[1.0] * 8, long_factor=[2.0] * 8, original_max_position_embeddings=32)
    config = T.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=64, rope_parameters=params)
    with pytest.raises(ValueError, match=rf"rope_type='{rope}'.*padded.*refuses"):
        lr.recycle(T.LlamaModel(config), at=1)


class LSTMStack(nn.Module):
    """Recurrent blocks in a ModuleList: each returns (output, (h, c)); ``pick`` is what forward keeps."""

    def __init__(self, pick: int = 0):
        super().__init__()
        self.pick = pick
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList([nn.LSTM(8, 8, batch_first=True) for _ in range(3)])
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, t, 4) -> (b, 2)
        x = self.embed(x)
        for layer in self.layers:
            out = layer(x)
            x = out[0] if self.pick == 0 else out[1][0].transpose(0, 1).expand(-1, x.shape[1], -1)
        return self.head(x[:, -1])


@pytest.mark.parametrize("at", [0, 1, 2, 3])
def test_blocks_returning_tuples_pass_their_first_item(at):
    torch.manual_seed(0)
    model, x = LSTMStack().eval(), torch.randn(5, 6, 4)
    rec = lr.recycle(model, at=at, example=[(xi, 0) for xi in x[:2]]).eval()
    assert "max abs diff" in rec.split_check.report
    with torch.no_grad():
        assert float((rec(x) - model(x)).abs().max()) <= 1e-5


def test_blocks_whose_forward_keeps_another_item_are_refused_before_the_first_batch():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="from the generic rule.*max abs diff"):
        lr.recycle(LSTMStack(pick=1).eval(), at=2, example=(torch.randn(6, 4), 0))


def test_example_runs_the_check_on_a_proven_entry_too():
    model = build("phi3", "ForCausalLM")
    rec = lr.recycle(model, at=2, example=examples("phi3")[0])
    assert rec.arch.tested and rec.split_check.report.startswith("compared logits (1, 5, 99)")
    with pytest.raises(ValueError, match=r"example=\[\]: expected one example"):
        lr.recycle(model, at=2, example=[])


def test_the_check_compares_the_most_padded_row_with_that_example_alone(monkeypatch):
    """Dynamic rope with its by-name refusal lifted: the padded batch (12 > 8 positions) rescales the rotary
    frequencies that the short example alone does not, so its stored state would be wrong; the check sees it."""
    monkeypatch.setattr(arch, "LENGTH_DEPENDENT", {})
    config = T.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=8,
                           rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    torch.manual_seed(0)
    model = T.LlamaModel(config).eval()
    rows = [{"input_ids": torch.arange(3, 15)}, {"input_ids": torch.arange(20, 25)}]
    with pytest.raises(ValueError, match=r"example 1 alone against its padded row: max abs diff .*depends on how "
                                         r"the batch was padded"):
        lr.recycle(model, at=1, example=rows)
    rec = lr.recycle(build("qwen3", "Model"), at=1, example=examples("qwen3"))  # an exact family passes
    assert "example 2 alone against its padded row: max abs diff" in rec.split_check.report
