"""Every family of ``tests/families.py`` recycled end to end: misses then hits, right and left padding, and
``predict``, each within 1e-5 of the example run alone. These runs are what puts an entry in ``arch.PROVEN``.

The default run samples one level per (family, head), turning through 0..L so each family meets several;
``make test-all`` runs every level.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T

import layer_recycling as lr
from layer_recycling import arch, discover
from conftest import TEXT_CASES, text_model, vit_model
from families import (FAMILIES, FOUND, LAYERS, Missing, alone, build, build_found, cohere2, examples, is_audio, padded,
                      worst)

CASES = [(case, head) for case, (_, _, _, heads, _) in FAMILIES.items() for head in heads]
# The speech variants (other norms, HuBERT, WavLM, data2vec-audio) sample two heads in the default run; every head of
# every family runs at every level under slow.
SAMPLED = [pytest.param(case, head, i % (LAYERS + 1), id=f"{case}-{head}-{i % (LAYERS + 1)}")
           for i, (case, head) in enumerate(CASES)
           if FAMILIES[case][4] != "audio" or case == "wav2vec2" or head in ("Model", "ForCTC")]
EVERY = [pytest.param(case, head, at, id=f"all-{case}-{head}-{at}", marks=pytest.mark.slow)
         for case, head in CASES for at in range(LAYERS + 1)]
TOL = 1e-5


def _model(case: str, head: str):
    try:
        return build(case, head)
    except Missing as err:  # a family or head the installed transformers lacks
        pytest.skip(f"{case} {head}: {err}")


@pytest.mark.parametrize("case, head, at", SAMPLED + EVERY)
def test_family_serves_what_each_example_alone_gives(case, head, at):
    model = _model(case, head)
    rows = examples(case)
    want = alone(model, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an LM head tied to the frozen embeddings warns; not what this tests
        rec = lr.recycle(model, at=at).eval()
    assert rec.arch.tested and rec.split_check is None, f"{case} is not a proven entry: it checks itself"
    _serves_each_alone(rec, rows, want, at)


def _serves_each_alone(rec, rows: list[dict], want: list[dict], at: int, layers: int | None = LAYERS) -> None:
    """Misses then hits, right and left padded, each row within ``TOL`` of its example run alone. Clips are stored
    as frames, which their heads count from the start of the row: left-padded clips are refused."""
    assert rec.at == at and rec.num_layers == (layers or rec.num_layers)
    sides = ("right",) if is_audio(rows) else ("right", "left")
    for side in sides:
        batch = padded(rows, side, rec.pipeline.pad_id)
        with torch.no_grad():
            missed, hit = rec(**batch), rec(**batch)
        assert worst(want, batch, missed) <= TOL, f"{side}-padded misses"
        assert worst(want, batch, hit) <= TOL, f"{side}-padded hits"
    if is_audio(rows):
        with pytest.raises(ValueError, match=r"row 0 of the batch is padded on the left .* Pad clips on the right"):
            rec(**padded(rows, "left"))
    assert rec.stats.misses == len(rows) and rec.stats.hits == (2 * len(sides) - 1) * len(rows)


@pytest.mark.parametrize("case", list(FAMILIES))
def test_predict_keys_and_serves_each_modality_like_text(case):
    """``fill`` then ``predict`` on raw examples (token ids or pixels): all hits, each as the example alone."""
    model = _model(case, FAMILIES[case][3][0])
    rows = examples(case)
    rec = lr.recycle(model, at=LAYERS // 2).eval()
    assert rec.fill(rows, progress=False) == len(rows) and rec.fill(rows, progress=False) == 0
    with torch.no_grad():
        got = rec.predict(rows, batch_size=2, progress=False)
    for want, out in zip(alone(model, rows), got):
        assert want.keys() <= out.keys(), f"{case}: predict gives {sorted(out)}, the model {sorted(want)}"
        for name, value in want.items():
            assert float((out[name] - value).abs().max()) <= TOL, f"{case} {name}"
    assert rec.stats.hits == len(rows) and rec.stats.misses == 0


@pytest.mark.parametrize("case, head", [("qwen2", "Model"), ("qwen3", "ForCausalLM"), ("gemma3_text", "TextModel")])
@pytest.mark.parametrize("at", [1, 2, 3])
def test_blocks_typed_by_their_index_keep_their_type_above_the_split(case, head, at):
    """Mixed sliding and full blocks (``config.layer_types``): the top's blocks keep their own types (and
    Gemma3's local or global rope), whatever the level; windows shorter than the examples make a shift visible."""
    model, rows = _model(case, head), examples(case, n=4)
    types = model.config.layer_types
    assert len(set(types)) == 2  # sliding and full
    rec = lr.recycle(model, at=at).eval()
    batch = padded(rows, "right", rec.pipeline.pad_id)
    with torch.no_grad():
        assert worst(alone(model, rows), batch, rec(**batch)) <= TOL


def test_a_blocks_override_gives_the_top_its_blocks_types_too():
    """A family outside the table with per-block types (Cohere2), split by ``blocks=``: exact at every level, on
    inputs longer than its window (the self-check ran on a short first batch, which no shift would show)."""
    try:
        model = cohere2()
    except Missing as err:
        pytest.skip(str(err))
    rows = [{"input_ids": torch.randint(3, 99, (n,), generator=torch.Generator().manual_seed(n))} for n in (2, 3)]
    long = [{"input_ids": torch.randint(3, 99, (n,), generator=torch.Generator().manual_seed(n))} for n in (12, 9)]
    for at in range(1, 4):
        rec = lr.recycle(model, at=at, blocks="layers").eval()
        with torch.no_grad():
            for batch_rows in (rows, long):  # the first batch runs the self-check
                batch = padded(batch_rows, "right", 0)
                assert worst(alone(model, batch_rows), batch, rec(**batch)) <= TOL, f"at {at}"


def test_every_proven_entry_is_run_by_a_test():
    """An entry is trusted only if a test runs it: these families here, the older ones in test_split.py."""
    elsewhere = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta-v2", "gpt2", "llama",
                 "mistral", "qwen2", "vit"}
    here = {key for key, *_ in FAMILIES.values()}
    assert set(arch.PROVEN) <= here | elsewhere, sorted(set(arch.PROVEN) - here - elsewhere)


REFUSED = {  # model type: a tiny model of it
    "vit_mae": lambda: T.ViTMAEModel(T.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=37, image_size=16, patch_size=4)),
    "funnel": lambda: T.FunnelModel(T.FunnelConfig(vocab_size=99, block_sizes=[1, 1], d_model=32, n_head=2, d_head=16,
                                                   d_inner=37)),
    "nystromformer": lambda: T.NystromformerModel(T.NystromformerConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        num_landmarks=4, segment_means_seq_len=16)),
}


@pytest.mark.parametrize("model_type", REFUSED)
def test_a_family_without_an_exact_split_is_refused_by_name_with_the_reason(model_type):
    model = REFUSED[model_type]()
    assert model.config.model_type == model_type
    with pytest.raises(ValueError, match=rf"\(model type '{model_type}'\) is refused: .{{60}}"):
        lr.recycle(model, at=1)


STACKED = [case for case, (key, *_) in FAMILIES.items() if arch.TABLE[key].build is None]


@pytest.mark.parametrize("case", STACKED)
def test_a_stacked_fill_stores_what_the_bottom_computes(case):
    """Level 1's store feeds level 3 through blocks 1..3 (``split.middle``): the same states as a fill from scratch."""
    model, rows = _model(case, FAMILIES[case][3][0]), examples(case)
    lower, direct = lr.recycle(model, at=1), lr.recycle(model, at=3)
    stacked = lr.recycle(model, at=3)
    direct.fill(rows, progress=False)
    stacked.fill(rows, progress=False, start_from=lower)
    keys = [direct.encode(r)[0] for r in rows]
    for want, got in zip(direct.store.get_many(keys), stacked.store.get_many(keys)):
        assert float((want - got).abs().max()) <= TOL, case
    assert stacked.stats.bottom_calls == 1 and lower.stats.bottom_calls == 1


# ---- families outside the table: found by ``discover`` on a synthetic example, checked, exact or refused ----------

# case: what its refusal says (a regex). Every other case of ``families.FOUND`` is exact at every level with no blocks=.
FOUND_REFUSED: dict[str, str] = {
    "funnel": r"\(model type 'funnel'\) is refused: its blocks pool the padded sequence",
    "nystromformer": r"\(model type 'nystromformer'\) is refused: its Nystrom attention averages segments",
    "vit_mae": r"\(model type 'vit_mae'\) is refused: it shuffles the patches by random noise in every forward",
}
LEVELS = {"levit": 3}  # found at its stages: a level counts stages
FOUND_CASES = [(case, head) for case, (_, _, heads, _) in FOUND.items() for head in heads]
# The default run: one family per kind of fix discovery makes (a decoder's multiplier, an encoder's inner final
# norm, a CNN's stages, a refusal); the rest under slow.
FOUND_SAMPLED = [pytest.param(case, head, at, id=f"found-{case}-{at}") for case, head, at in
                 [("granite", "Model", 2), ("megatron-bert", "ForSequenceClassification", 3), ("resnet", "Model", 1),
                  ("vit_mae", "Model", 1)]]
FOUND_EVERY = [pytest.param(case, head, at, id=f"found-all-{case}-{head}-{at}", marks=pytest.mark.slow)
               for case, head in FOUND_CASES for at in range(LEVELS.get(case, LAYERS) + 1)]


def _found_model(case: str, head: str):
    try:
        return build_found(case, head)
    except Missing as err:
        pytest.skip(f"{case} {head}: {err}")


@pytest.mark.parametrize("case, head, at", FOUND_SAMPLED + FOUND_EVERY)
def test_a_family_outside_the_table_is_found_checked_and_exact(case, head, at):
    """No ``blocks=``, no example: the block list is found and the split proven at construction, or refused."""
    model = _found_model(case, head)
    assert model.config.model_type == case and case not in arch.TABLE
    rec = _discovered(model, examples(case), at, FOUND_REFUSED.get(case), layers=None)  # CNN stages: not always 4
    assert rec is None or rec.arch.blocks == arch.FOUND_BY_TESTS[case]  # as the README says


def _discovered(model, rows: list[dict], at: int, refusal: str | None, layers: int | None = LAYERS):
    """``recycle(model, at)`` with no ``blocks=``: refused matching ``refusal`` (None), else found and exact on
    ``rows`` (the recycled model)."""
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            lr.recycle(model, at=at)
        return None
    want = alone(model, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an LM head tied to the frozen embeddings warns
        rec = lr.recycle(model, at=at).eval()
    assert not rec.arch.tested and rec.arch.source == discover.SOURCE  # it still checks its first batches
    _serves_each_alone(rec, rows, want, at, layers)
    return rec


def test_the_readme_lists_the_families_found_as_the_tests_find_them():
    exact = {case for case in FOUND if case not in FOUND_REFUSED}
    assert set(arch.FOUND_BY_TESTS) == exact, sorted(set(arch.FOUND_BY_TESTS) ^ exact)


# Proven table entries that discovery alone cannot reproduce, and why (a regex of the refusal).
NOT_FOUND_ALONE: dict[str, str] = {
    "albert": r"the lists considered were: 'encoder.albert_layer_groups': the forward ran its items \[0, 0, 1, 1\], "
              r"not each once in order",  # its shared layer groups run twice each: halves.albert counts applications
    "t5": r"'encoder.block' \(as found\): at level 2, compared last_hidden_state",  # block 0 computes the bias
    "whisper": r"its input 'input_features' is not one the library makes up",
    # its encoder adds a convolution to block 0's output and cannot run zero blocks (arch's _deberta_top, _bottom)
    "deberta-v2": r"'encoder.layer' \(as found\): at level \d, (compared|bottom then top fails)",
    # their forwards take no inputs_embeds, and pool a token found in input_ids (text_towers carries it over)
    **dict.fromkeys(("clip_text_model", "siglip_text_model"),
                    r"'encoder.layers': blocks='encoder.layers' on \w+TextModel: to feed stored states"),
    # raw clips and spectrograms: no example is made up for them (the table's halves store each clip's frames)
    **dict.fromkeys(("wav2vec2", "hubert", "wavlm", "data2vec-audio", "audio-spectrogram-transformer"),
                    r"its input 'input_values' is not one the library makes up"),
    # their blocks read the feature map's or the image's size, which the top does not receive as found
    # (Swin's stages are found as its blocks, so levels past its 2 stages cannot be cut)
    "swin": r"'encoder.layers' \(as found\): (at level \d, bottom then top fails|cutting it fails)",
    "swinv2": r"'encoder.layers' \(as found\): (at level \d, bottom then top fails|cutting it fails)",
    "data2vec-vision": r"'encoder.layer' \(as found\): at level \d, (bottom then top fails|compared)",
    "beit": r"'layers' \(as found\): at level \d, (bottom then top fails|compared)",
}
ALONE = [(case, head) for case, (_, _, _, heads, _) in FAMILIES.items() for head in heads]
ALONE_SAMPLED = [pytest.param(case, FAMILIES[case][3][0], at, id=f"alone-{case}") for case, at in
                 [("opt", 2), ("albert", 1)]]
ALONE_EVERY = [pytest.param(case, head, at, id=f"alone-all-{case}-{head}-{at}", marks=pytest.mark.slow)
               for case, head in ALONE for at in range(LAYERS + 1)]


@pytest.mark.parametrize("case, head, at", ALONE_SAMPLED + ALONE_EVERY)
def test_discovery_alone_is_exact_on_the_families_the_table_proves(monkeypatch, case, head, at):
    """Each proven entry removed: the split found by running the model gives the same outputs, or is refused
    naming the lists it considered. Never silently wrong."""
    key = FAMILIES[case][0]
    model = _model(case, head)
    monkeypatch.delitem(arch.TABLE, key)
    _discovered(model, examples(case), at, NOT_FOUND_ALONE.get(key))


@pytest.mark.parametrize("at", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_state_space_blocks_typed_by_index_split_exactly_with_blocks_named(at):
    """Jamba (Mamba blocks between attention blocks, its ``layer_types`` a read-only property) with blocks='layers':
    this crashed with an AttributeError; the top's blocks now keep their own types."""
    model = _found_model("jamba", "Model")
    assert len(set(model.config.layer_types)) == 2
    rows = examples("jamba")
    rec = lr.recycle(model, at=at, blocks="layers").eval()
    _serves_each_alone(rec, rows, alone(model, rows), at)


def test_a_model_whose_inputs_cannot_be_made_up_is_refused_saying_what_to_pass():
    config = T.SEWConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
                         num_conv_pos_embedding_groups=2, squeeze_factor=1)
    with pytest.raises(ValueError, match=r"its input 'input_values' is not one the library makes up.*blocks="):
        lr.recycle(T.SEWModel(config), at=1)


OLDER = [(family, head) for family, head in TEXT_CASES if not head.endswith("QuestionAnswering")] + [("vit", "Model")]


@pytest.mark.parametrize("family, head", [pytest.param(f, h, marks=pytest.mark.slow) for f, h in OLDER])
@pytest.mark.parametrize("at", range(LAYERS + 1))
def test_discovery_alone_is_exact_on_the_older_proven_families(monkeypatch, family, head, at):
    """As above, for the families ``test_split.py`` proves (BERT and its kin, GPT-2, Llama, ViT)."""
    model = vit_model(head) if family == "vit" else text_model(family, head)
    monkeypatch.delitem(arch.TABLE, family)
    g = torch.Generator().manual_seed(1)
    rows = ([{"pixel_values": torch.randn(3, 16, 16, generator=g)} for _ in range(3)] if family == "vit" else
            [{"input_ids": torch.randint(3, 99, (n,), generator=g)} for n in (5, 9, 3)])
    _discovered(model, rows, at, NOT_FOUND_ALONE.get(family))


def test_a_found_split_serves_a_stacked_fill_and_its_levels_are_each_checked():
    """The split found for a model is kept by model (``arch.FOUND``): a stacked fill runs blocks 1..3 of it, and
    the states equal a fill from scratch."""
    model, rows = _found_model("olmo2", "Model"), examples("olmo2")
    lower, direct, stacked = (lr.recycle(model, at=at) for at in (1, 3, 3))
    assert arch.lookup(model) is lower.arch and lower.arch.source == discover.SOURCE
    direct.fill(rows, progress=False)
    stacked.fill(rows, progress=False, start_from=lower)
    keys = [direct.encode(r)[0] for r in rows]
    for want, got in zip(direct.store.get_many(keys), stacked.store.get_many(keys)):
        assert float((want - got).abs().max()) <= TOL
