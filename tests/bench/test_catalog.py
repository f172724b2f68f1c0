"""catalog.py: the harness's model factory quiets transformers' logging for its own loads only."""

from __future__ import annotations

import pytest
from transformers.utils import logging

from layer_recycling.bench.catalog import model_factory


@pytest.mark.parametrize("kind, labels", [("seq-cls", 3), ("retrieval", 0)])
def test_a_model_load_leaves_the_logging_level_as_the_caller_set_it(tiny_model_dir, monkeypatch, kind, labels):
    """The factory set transformers' verbosity to errors for the whole process; now only while it loads."""
    levels = []
    load = logging.set_verbosity
    monkeypatch.setattr(logging, "set_verbosity", lambda v: (levels.append(v), load(v))[1])
    before = logging.get_verbosity()
    logging.set_verbosity_info()
    try:
        make = model_factory(str(tiny_model_dir), kind, labels)
        assert logging.get_verbosity() == logging.INFO  # building the factory changes nothing
        model = make()
        assert logging.get_verbosity() == logging.INFO
        assert logging.ERROR in levels  # quiet while loading: the new head's notice is expected
    finally:
        logging.set_verbosity(before)
    assert kind == "retrieval" or model.config.num_labels == labels
