"""Fine-tune a sentence embedder with recycling on FAQ pairs, put the answers into Qdrant, answer questions.

    pip install 'layer-recycling[st,qdrant]'
    pip install --no-deps zaragoza-construction-faq==1.2.1     # 503 FAQ question/answer pairs (CC BY 4.0)
    python examples/qdrant_faq.py                              # all-MiniLM-L6-v2, half its blocks recycled
    python examples/qdrant_faq.py --model path/to/st-model --pairs my_faq.jsonl   # {"q": ..., "a": ...} per line

The bottom runs once per distinct text (the fill); every epoch after it reads the store. Qdrant runs in local
mode (``QdrantClient(":memory:")``); recall is scored by exact search (tensor math) and Qdrant's answers beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

def read_pairs(path: Path | None) -> list[tuple[str, str]]:
    """(question, answer) pairs of a JSONL file with "q" and "a" fields; default: the FAQ package's English file."""
    if path is None:
        from layer_recycling.bench.retrieval import faq_pairs

        return faq_pairs()  # says how to install the package where it is missing
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if "q" not in row or "a" not in row:
                raise SystemExit(f"{path}:{n}: expected a JSON object with 'q' and 'a' fields; found {sorted(row)}")
            pairs.append((row["q"], row["a"]))
    return pairs


def train(model, pairs: list[tuple[str, str]], epochs: int, batch: int, out: Path) -> None:
    """``epochs`` of SentenceTransformerTrainer with MultipleNegativesRankingLoss on (question, answer) pairs."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    args = SentenceTransformerTrainingArguments(
        str(out), num_train_epochs=epochs, per_device_train_batch_size=batch, learning_rate=5e-5, report_to=[],
        save_strategy="no", disable_tqdm=True, seed=0, logging_strategy="no")
    data = datasets.Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [a for _, a in pairs]})
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                               loss=losses.MultipleNegativesRankingLoss(model)).train()


def recall_at_1(questions: torch.Tensor, answers: torch.Tensor) -> float:
    """Share of questions (n, d) whose nearest answer (n, d) by cosine is their own: exact search."""
    scores = torch.nn.functional.normalize(questions, dim=-1) @ torch.nn.functional.normalize(answers, dim=-1).T
    return float((scores.argmax(dim=1) == torch.arange(len(scores))).float().mean())


def qdrant_answers(answers: list[str], answer_vectors: torch.Tensor, question_vectors: torch.Tensor) -> list[int]:
    """The index of the answer Qdrant (local mode, in memory) finds first for each question."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection("faq", vectors_config=models.VectorParams(size=answer_vectors.shape[1],
                                                                       distance=models.Distance.COSINE))
    client.upsert("faq", points=[models.PointStruct(id=i, vector=v.tolist(), payload={"answer": a})
                                 for i, (a, v) in enumerate(zip(answers, answer_vectors))])
    return [client.query_points("faq", query=q.tolist(), limit=1).points[0].id for q in question_vectors]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a SentenceTransformer folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--pairs", type=Path, default=None, help="JSONL with q and a fields (default: the FAQ package)")
    ap.add_argument("--at", type=float, default=0.5, help="the recycled fraction of blocks")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("results/qdrant_faq"))
    args = ap.parse_args(argv)
    from sentence_transformers import SentenceTransformer

    from layer_recycling.bench.assets import minilm_path
    from layer_recycling.integrations.sentence_transformers import recycle_sentence_transformer, recycled_models

    pairs = read_pairs(args.pairs)
    questions, answers = [q for q, _ in pairs], [a for _, a in pairs]
    model = SentenceTransformer(args.model or str(minilm_path()), device="cpu")
    before = recall_at_1(model.encode(questions, convert_to_tensor=True), model.encode(answers, convert_to_tensor=True))
    recycled = recycle_sentence_transformer(model, args.at)
    rec = recycled_models(recycled)["0"]
    train(recycled, pairs, 1, args.batch, args.out)  # the first epoch fills the store
    filled = rec.stats.bottom_examples
    if args.epochs > 1:
        train(recycled, pairs, args.epochs - 1, args.batch, args.out)  # from the store
    q, a = recycled.encode(questions, convert_to_tensor=True), recycled.encode(answers, convert_to_tensor=True)
    after = recall_at_1(q, a)
    found = qdrant_answers(answers, a, q)
    agree = sum(f == i for i, f in enumerate(found)) / len(found)
    print(f"{len(pairs)} pairs, {rec.at}/{rec.num_layers} blocks recycled: R@1 {before:.3f} -> {after:.3f} (exact "
          f"search); Qdrant's first answer is the right one for {agree:.3f}")
    print(f"the bottom ran on {filled} texts in the fill and {rec.stats.bottom_examples - filled} times after it")
    for i in range(min(3, len(pairs))):
        print(f"Q: {questions[i]}\nA: {answers[found[i]][:120]}")
    return {"recall_before": before, "recall_after": after, "qdrant_recall": agree, "filled": filled,
            "bottom_after_fill": rec.stats.bottom_examples - filled}


if __name__ == "__main__":
    main()
