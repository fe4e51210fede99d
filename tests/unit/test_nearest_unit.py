"""Pieces of the 1:N search that need no database: index names and the vector text form."""

import uuid

import numpy as np
import pytest

from shared.gallery_index import PREFIX, _literal, index_name
from worker.nearest import vector_text


def test_index_name_is_per_tenant_and_version_and_a_valid_identifier():
    a, b = uuid.uuid4(), uuid.uuid4()
    names = {index_name(a, "v1"), index_name(a, "v2"), index_name(b, "v1")}
    assert len(names) == 3
    assert index_name(a, "v1") == index_name(a, "v1")
    for name in names:
        assert name.startswith(PREFIX) and len(name) <= 63 and name.replace("_", "").isalnum()


def test_vector_text_gives_the_float32_values_back_exactly():
    values = np.random.default_rng(0).normal(0, 0.1, 128).astype(np.float32)
    parsed = np.array(vector_text(values)[1:-1].split(","), dtype=np.float64).astype(np.float32)
    assert np.array_equal(parsed, values)


def test_literal_quotes_and_refuses_nul():
    assert _literal("it's") == "'it''s'"
    with pytest.raises(ValueError):
        _literal("a\x00b")
