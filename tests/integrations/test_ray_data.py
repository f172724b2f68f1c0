"""A local Ray (2 CPUs, no dashboard, shut down at the end) fills the store as one process would."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

import layer_recycling as lr
from conftest import text_examples, text_model
from helpers import assert_stores_agree, threads

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'layer-recycling[ray]'")


def make(path: str) -> lr.Recycled:
    return lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(path))


@pytest.fixture(scope="module")
def local_ray():
    here, tests = Path(__file__).parent, Path(__file__).parents[1]  # this module and conftest, for the workers
    path = os.pathsep.join([str(here), str(tests), str(tests.parent / "src"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_ray_fill_equals_one_process_and_runs_each_key_once(local_ray, tmp_path):
    from layer_recycling.integrations.ray_data import fill_from_dataset

    examples = text_examples(13)
    dataset = local_ray.data.from_items(examples + examples[:5])  # duplicates: computed once
    summary = fill_from_dataset(functools.partial(make, str(tmp_path / "store")), dataset, batch_size=1,
                                concurrency=2, num_cpus=0.5)
    assert summary["computed"] == 13
    alone = make(str(tmp_path / "one"))
    with threads(1):  # as each Ray worker runs (OMP_NUM_THREADS=1)
        alone.fill(examples, batch_size=1, progress=False)
    assert_stores_agree(alone.store, lr.DiskStore(tmp_path / "store", readonly=True))


@pytest.mark.slow
def test_a_second_ray_fill_is_free(local_ray, tmp_path):
    from layer_recycling.integrations.ray_data import fill_from_dataset

    dataset = local_ray.data.from_items(text_examples(6))
    factory = functools.partial(make, str(tmp_path / "store"))
    assert fill_from_dataset(factory, dataset, batch_size=2, num_cpus=0.5)["computed"] == 6
    assert fill_from_dataset(factory, dataset, batch_size=2, num_cpus=0.5)["computed"] == 0


def by_id(example: dict) -> int:
    return example["id"]


def make_keyed(path: str) -> lr.Recycled:
    return lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(path), key=by_id)


def test_a_ray_fill_under_user_keys_keeps_input_digests(local_ray, tmp_path):
    from layer_recycling.integrations.ray_data import fill_from_dataset

    examples = [dict(e, id=i) for i, e in enumerate(text_examples(4))]
    path = str(tmp_path / "store")
    assert fill_from_dataset(functools.partial(make_keyed, path), local_ray.data.from_items(examples),
                             batch_size=2, num_cpus=0.5)["computed"] == 4
    rec = make_keyed(path)
    assert all(c is not None for c in rec.store.checks_many([lr.digest(i) for i in range(4)]))
    later = [dict(e, id=i) for i, e in enumerate(text_examples(4, lengths=(7, 3)))]  # same ids, other inputs
    with pytest.raises(ValueError, match="stored earlier from different model inputs"):
        rec.fill(later, progress=False)
    twins = [dict(e, id=9) for e in text_examples(2, lengths=(5, 6))]  # one new key, two different inputs
    with pytest.raises(Exception, match="the same key .* but their model inputs differ"):  # was stored, one of them
        fill_from_dataset(functools.partial(make_keyed, path), local_ray.data.from_items(twins), batch_size=2,
                          num_cpus=0.5)
    assert lr.digest(9) not in make_keyed(path).store
