"""fastcnn.metrics checked against scikit-learn on random label vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from fastcnn.metrics import accuracy, confusion_matrix, macro_f1, precision_recall_f1


@st.composite
def label_pairs(draw: st.DrawFn, min_size: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(y_true, y_pred, k) with k up to 12; small k and n make absent classes common."""
    k = draw(st.integers(1, 12))
    n = draw(st.integers(min_size, 60))
    # Labels drawn from a random subset so some classes are missing from one or both sides.
    true_pool = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    pred_pool = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    y_true = draw(st.lists(st.sampled_from(true_pool), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.sampled_from(pred_pool), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16]))
    return np.array(y_true, dtype=dtype), np.array(y_pred, dtype=dtype), k


@settings(max_examples=200, deadline=None)
@given(label_pairs())
def test_accuracy_matches_sklearn(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, y_pred, _ = data
    got = accuracy(y_true, y_pred)
    assert isinstance(got, float)
    assert got == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)


# scikit-learn warns about single-label inputs even when labels= is given.
@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=200, deadline=None)
@given(label_pairs())
def test_confusion_matrix_matches_sklearn(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, y_pred, k = data
    got = confusion_matrix(y_true, y_pred, num_classes=k)
    want = skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    assert got.dtype == np.int64
    assert got.shape == (k, k)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == len(y_true)


@settings(max_examples=200, deadline=None)
@given(label_pairs())
def test_precision_recall_f1_matches_sklearn(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, y_pred, k = data
    precision, recall, f1, support = precision_recall_f1(y_true, y_pred, num_classes=k)
    want = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), average=None, zero_division=0
    )
    for got, expected in zip((precision, recall, f1, support), want, strict=True):
        assert got.shape == (k,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert support.dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(label_pairs())
def test_macro_f1_matches_sklearn(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, y_pred, k = data
    want = skm.f1_score(y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0)
    got = macro_f1(y_true, y_pred, num_classes=k)
    assert isinstance(got, float)
    assert got == pytest.approx(want, abs=1e-12)


def test_absent_classes_count_as_zero() -> None:
    # Classes 2..9 never appear: their F1 is 0 and still drags the macro average down.
    y = np.array([0, 0, 1, 1])
    p, r, f1, support = precision_recall_f1(y, y)
    np.testing.assert_array_equal(p, [1, 1] + [0] * 8)
    np.testing.assert_array_equal(r, [1, 1] + [0] * 8)
    np.testing.assert_array_equal(f1, [1, 1] + [0] * 8)
    np.testing.assert_array_equal(support, [2, 2] + [0] * 8)
    assert macro_f1(y, y) == pytest.approx(0.2)
    assert macro_f1(y, y, num_classes=2) == 1.0


def test_known_confusion_matrix() -> None:
    cm = confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])


def test_accepts_lists() -> None:
    assert accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "length"),
        ([[0, 1]], [[0, 1]], "y_true must be 1-D"),
        ([0, 1], [[0, 1]], "y_pred must be 1-D"),
        ([0.0, 1.0], [0, 1], "y_true must hold integer"),
        ([0, 1], [0.5, 1.0], "y_pred must hold integer"),
        ([0, 1], ["a", "b"], "y_pred must hold integer"),
        ([0, -1], [0, 1], "y_true has label -1"),
        ([0, 1], [0, 10], "y_pred has label 10"),
        ([10, 1], [0, 1], "y_true has label 10"),
    ],
)
def test_bad_inputs(y_true: list, y_pred: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        precision_recall_f1(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        macro_f1(y_true, y_pred)


def test_accuracy_bad_inputs() -> None:
    with pytest.raises(ValueError, match="length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="y_pred must hold integer"):
        accuracy([0, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_num_classes(k: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0], [0], num_classes=k)  # type: ignore[arg-type]


def test_empty_inputs_give_zero_counts() -> None:
    np.testing.assert_array_equal(confusion_matrix([], [], num_classes=3), np.zeros((3, 3)))
    assert macro_f1([], [], num_classes=3) == 0.0


def test_scores_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from fastcnn.metrics import scores

    rng = np.random.default_rng(3)
    logits = rng.standard_normal((200, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 200)
    s = scores(y, probs)
    assert s["loss"] == pytest.approx(log_loss(y, probs, labels=range(4)), rel=1e-9)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert s["macro_f1"] == pytest.approx(
        f1_score(y, probs.argmax(1), average="macro", labels=range(4), zero_division=0))
    with pytest.raises(ValueError, match="labels for"):
        scores(y[:10], probs)
