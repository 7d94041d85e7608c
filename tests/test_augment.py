"""Augmentation: the shift-and-flip kernel against both oracles, what Augmentation draws,
and fit(augment=...) resuming and repeating bit for bit."""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn as fc
from fastcnn import kernels, naive, reference
from fastcnn.augment import shift_flip


@st.composite
def cases(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = r.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    shifts = np.stack([r.integers(-h + 1, h, n), r.integers(-w + 1, w, n)], axis=1)
    return images, shifts, r.random(n) < 0.5


@given(cases())
def test_kernel_matches_oracles(case):
    images, shifts, flips = case
    out = kernels.shift_flip(images, shifts, flips)
    assert out.dtype == np.uint8 and out.shape == images.shape
    for oracle in (reference, naive):
        np.testing.assert_array_equal(out, oracle.shift_flip(images, shifts, flips))


def test_shifts_fill_with_zeros_and_flips_mirror():
    image = np.arange(1, 13, dtype=np.uint8).reshape(1, 1, 3, 4)
    out = shift_flip(image, np.array([[1, -1]]), np.array([False]))
    np.testing.assert_array_equal(out[0, 0], [[0, 5, 6, 7], [0, 9, 10, 11], [0, 0, 0, 0]])
    flipped = shift_flip(image, np.array([[0, 0]]), np.array([True]))
    np.testing.assert_array_equal(flipped[0, 0], image[0, 0, :, ::-1])
    both = shift_flip(image, np.array([[1, -1]]), np.array([True]))
    np.testing.assert_array_equal(both[0, 0], out[0, 0, :, ::-1])


def test_augmentation_draws_every_shift_and_half_flips():
    images = np.zeros((4000, 1, 13, 13), np.uint8)
    images[:, 0, 6, 2] = 255  # one bright pixel, left of the centre
    out = fc.Augmentation(shift=2).apply(images, np.random.default_rng(0))
    n, rows, cols = np.nonzero(out[:, 0] == 255)
    assert np.array_equal(n, np.arange(4000))  # never shifted out
    assert sorted(set(rows)) == [4, 5, 6, 7, 8]  # 6 - dy for dy in -2..2
    # Column 2 - dx (0..4), or mirrored: 10 + dx (8..12).
    assert sorted(set(cols)) == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    assert 0.45 < (cols >= 8).mean() < 0.55
    same = fc.Augmentation(shift=0, flip=False).apply(images, np.random.default_rng(0))
    np.testing.assert_array_equal(same, images)


def model(seed=0):
    return fc.Sequential([fc.Conv2D(4, 3, padding="same", activation="relu"), fc.Dropout(0.2),
                          fc.MaxPool2D(2), fc.Flatten(), fc.Dense(10)], seed=seed)


@pytest.fixture(scope="module")
def data():
    x, y = fc.load_dataset("sample", "train")
    return x[:640], y[:640]


def fit(m, data, opt, **kwargs):
    return m.fit(*data, epochs=2, batch_size=32, optimizer=opt, seed=3, verbose=False,
                 augment=fc.Augmentation(shift=3), **kwargs)


def test_fit_augments(data):
    """Augmented training differs from plain training (the bit-identical stop and resume
    of augmented runs is in test_reliability)."""
    full = model()
    fit(full, data, fc.Adam(0.01))
    plain = model()
    plain.fit(*data, epochs=2, batch_size=32, optimizer=fc.Adam(0.01), seed=3, verbose=False)
    assert not np.array_equal(full.parameters()[0], plain.parameters()[0])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_augmented_training_is_the_same_with_one_or_two_threads(data):
    runs = []
    try:
        for threads in (1, 2):
            fc.set_threads(threads)
            m = model()
            fit(m, data, fc.Adam(0.01))
            runs.append(m.parameters())
    finally:
        fc.set_threads(None)
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("call, exc, match", [
    (lambda d: fc.Augmentation(shift=-1), ValueError, "shift must be"),
    (lambda d: fc.Augmentation(flip="yes"), TypeError, "flip must be True or False"),
    (lambda d: model().fit(d[0].astype(np.float32), d[1], augment=fc.Augmentation(),
                           verbose=False), TypeError, "augment works on uint8"),
    (lambda d: model().fit(*d, augment=fc.Augmentation(shift=28), verbose=False),
     ValueError, "larger than that"),
    (lambda d: model().fit(*d, augment={"shift": 2}, verbose=False), TypeError,
     "augment must be an Augmentation"),
    (lambda d: shift_flip(np.zeros((2, 1, 4, 4), np.uint8), np.array([[4, 0], [0, 0]]),
                          np.zeros(2, bool)), ValueError, "smaller than the image"),
    (lambda d: shift_flip(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 2), int),
                          np.zeros(2, bool)), TypeError, "images must be uint8"),
    (lambda d: shift_flip(np.zeros((2, 1, 4, 4), np.uint8), np.zeros((2, 2)),
                          np.zeros(2, bool)), TypeError, "shifts must be integers"),
    (lambda d: shift_flip(np.zeros((2, 1, 4, 4), np.uint8), np.zeros((2, 2), int),
                          np.zeros(3, bool)), TypeError, "flips must be bool"),
])
def test_bad_arguments_are_named(data, call, exc, match):
    with pytest.raises(exc, match=match):
        call(data)
