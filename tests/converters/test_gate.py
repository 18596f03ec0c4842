"""Gate metrics and budget checks (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.converters import Budgets, check, compare, default_budgets
from edgewise.converters.gate import misses_table
from edgewise.errors import RecipeError


def test_identical_outputs_are_perfect():
    ref = np.random.default_rng(0).normal(size=(50, 10))
    m = compare("classification", ref, ref.copy(), labels=ref.argmax(1))
    assert m["top1_agreement"] == 1.0 and m["accuracy"] == 1.0 and m["accuracy_drop_pct"] == 0.0
    assert m["cosine_min"] == pytest.approx(1.0) and m["max_abs_error"] == 0.0


def test_classification_agreement_and_accuracy_drop():
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    cand = ref.copy()
    cand[0] = [0, 1, 0, 0]  # one of eight flips
    m = compare("classification", ref, cand, labels=np.array([0, 1, 2, 3, 0, 1, 2, 3]))
    assert m["top1_agreement"] == pytest.approx(7 / 8)
    assert m["accuracy_drop_pct"] == pytest.approx(12.5)


def test_worst_case_cosine_is_reported():
    ref = np.ones((3, 4))
    cand = ref.copy()
    cand[2] = [1, -1, 1, -1]
    m = compare("embedding", ref, cand)
    assert m["cosine_min"] == pytest.approx(0.0, abs=1e-9)
    assert m["cosine_mean"] == pytest.approx(2 / 3)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        compare("embedding", np.ones((2, 3)), np.ones((2, 4)))


def test_check_reports_each_miss_with_margin():
    misses = check("onnx/int8", {"cosine_min": 0.95, "top1_agreement": 0.999, "accuracy_drop_pct": 2.5},
                   Budgets(cosine_min=0.99, top1_agreement_min=0.99, accuracy_drop_max_pct=1.0))
    assert [(m.metric, round(m.by, 3)) for m in misses] == [("accuracy_drop_pct", 1.5), ("cosine_min", 0.04)]
    table = misses_table(misses)
    assert "| onnx/int8 | cosine_min | >= 0.99 | 0.95 | 0.04 |" in table


def test_unmeasured_metrics_are_not_checked():
    assert check("a", {"cosine_min": 1.0}, Budgets(accuracy_drop_max_pct=0.1)) == []


def test_budgets_parse_and_merge():
    b = Budgets.from_dict({"cosine_min": 0.98})
    assert default_budgets("embedding", True).merged(b).cosine_min == 0.98
    with pytest.raises(RecipeError, match="unknown budget"):
        Budgets.from_dict({"cosine_max": 1})
    with pytest.raises(RecipeError, match="must be a number"):
        Budgets.from_dict({"cosine_min": "high"})
