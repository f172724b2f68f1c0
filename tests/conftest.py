"""Tiny random models of every supported family, built from configs (offline, seconds to run)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, LABELS = 99, 32, 4, 2, 3
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)


def _configs() -> dict:
    return {
        "bert": T.BertConfig(**_COMMON),
        "roberta": T.RobertaConfig(**_COMMON, pad_token_id=1),
        "xlm-roberta": T.XLMRobertaConfig(**_COMMON, pad_token_id=1),
        "distilbert": T.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                         hidden_dim=37, max_position_embeddings=64, num_labels=LABELS),
        "electra": T.ElectraConfig(**_COMMON, embedding_size=16),
        "mpnet": T.MPNetConfig(**_COMMON),
        "deberta-v2": T.DebertaV2Config(**_COMMON, relative_attention=True, position_buckets=8,
                                        pos_att_type=["p2c", "c2p"], conv_kernel_size=3, max_relative_positions=16),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                             bos_token_id=0, eos_token_id=0, num_labels=LABELS),
        "llama": T.LlamaConfig(**_COMMON, num_key_value_heads=1, bos_token_id=0, eos_token_id=0),
    }


_HEADS = {
    "bert": ("Bert", ["Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]),
    "roberta": ("Roberta", ["Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]),
    "xlm-roberta": ("XLMRoberta", ["Model", "ForSequenceClassification", "ForTokenClassification",
                                   "ForQuestionAnswering"]),
    "distilbert": ("DistilBert", ["Model", "ForSequenceClassification", "ForTokenClassification",
                                  "ForQuestionAnswering"]),
    "electra": ("Electra", ["Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]),
    "mpnet": ("MPNet", ["Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]),
    "deberta-v2": ("DebertaV2", ["Model", "ForSequenceClassification", "ForTokenClassification",
                                 "ForQuestionAnswering"]),
    "gpt2": ("GPT2", ["Model", "LMHeadModel", "ForTokenClassification"]),
    "llama": ("Llama", ["Model", "ForCausalLM", "ForTokenClassification"]),
}

TEXT_CASES = [(fam, head) for fam, (_, heads) in _HEADS.items() for head in heads]


def text_model(family: str, head: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls = getattr(T, _HEADS[family][0] + head)
    config = _configs()[family]
    if head == "ForQuestionAnswering":
        config.num_labels = 2  # start and end logits
    return cls(config).eval()


def vit_model(head: str = "ForImageClassification", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = T.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         intermediate_size=37, image_size=16, patch_size=4, num_labels=LABELS)
    return getattr(T, "ViT" + head)(config).eval()


class TinyCNN(nn.Module):
    """A torchvision-style CNN: stem, a Sequential of blocks, then pooling and a classifier."""

    def __init__(self, blocks: int = 4, width: int = 8, classes: int = LABELS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.2))
            for _ in range(blocks)
        ])
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def cnn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN()
    model.train()  # give BatchNorm real running statistics, then freeze them
    with torch.no_grad():
        model(torch.randn(16, 3, 8, 8) * 2 + 1)
    return model.eval()


def text_examples(n: int = 6, seed: int = 1, lengths: tuple[int, ...] = (5, 9, 3, 12, 7, 2)) -> list[dict]:
    """Unpadded one-example dicts as a tokenizer returns them, with a sequence label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = lengths[i % len(lengths)]
        ids = torch.randint(3, VOCAB, (k,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * k, "label": i % LABELS})
    return out


@pytest.fixture
def bert():
    return text_model("bert", "ForSequenceClassification")


WORDS = ["good", "bad", "great", "awful", "film", "plot", "actor", "boring", "fun", "the", "a", "was", "is", "paris",
         "london", "john", "mary", "lives", "in", "who", "where", "what", "city", "?", ".", ","]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny BERT with a word-level WordPiece tokenizer: a stand-in for a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    import tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert tok("the film was good")["input_ids"] == [2, *(vocab[w] for w in "the film was good".split()), 3]
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    T.BertModel(T.BertConfig(**{**_COMMON, "vocab_size": len(vocab)})).save_pretrained(folder)
    return folder


# Decoder sequence classifiers: num_labels and a label per example for each problem_type transformers infers.
PROBLEMS = {
    "regression": (1, lambda i: 0.5 * i - 1.0),
    "single_label_classification": (LABELS, lambda i: i % LABELS),
    "multi_label_classification": (LABELS, lambda i: [float(i % 2), 1.0, float(i % 3 == 0)]),
}


def decoder_classifier(family: str, problem: str, seed: int = 0) -> nn.Module:
    """A tiny GPT-2/Llama/Mistral/Qwen2 ForSequenceClassification with ``PROBLEMS[problem]``'s num_labels."""
    torch.manual_seed(seed)
    common = {k: v for k, v in _COMMON.items() if k != "num_labels"}
    configs = {
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                                     bos_token_id=0, eos_token_id=0),
        "llama": lambda: T.LlamaConfig(**common, num_key_value_heads=1, bos_token_id=0, eos_token_id=0),
        "mistral": lambda: T.MistralConfig(**common, num_key_value_heads=1, bos_token_id=0, eos_token_id=0),
        "qwen2": lambda: T.Qwen2Config(**common, num_key_value_heads=1, bos_token_id=0, eos_token_id=0),
    }
    config = configs[family]()
    config.num_labels = PROBLEMS[problem][0]
    names = {"gpt2": "GPT2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
    return getattr(T, names[family] + "ForSequenceClassification")(config).eval()
