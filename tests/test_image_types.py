"""The image-type classifier: whole-image features and a multinomial logistic regression on them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from cellpipe.image_types import N_FEATURES, TypeClassifier, image_features


def _texture(sigma: float, seed: int, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A uint8 image of noise smoothed at ``sigma`` px: blobs of one size, as a type's cells are."""
    x = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 30 * x, 0, 255).astype(np.uint8)


SIGMAS = (1.0, 2.5, 6.0)  # three "types": small, middle and large structures


def _features(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    rows = [(image_features(_texture(s, seed)), k) for seed in seeds for k, s in enumerate(SIGMAS)]
    return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows])


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_features_are_finite_for_any_image(grey):
    f = image_features(grey)
    assert f.shape == (N_FEATURES,) and np.isfinite(f).all()


def test_features_refuse_what_is_not_a_grey_image():
    with pytest.raises(ValueError, match="2-D grey image"):
        image_features(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D grey image"):
        image_features(np.zeros((0, 4), np.uint8))


def test_the_classifier_tells_unseen_images_of_each_type_apart():
    x, y = _features(range(6))
    fit = TypeClassifier.fit(x, y, 3)
    for k, s in enumerate(SIGMAS):
        for seed in range(100, 104):
            assert fit.predict(_texture(s, seed)) == k
            assert fit.predict(_texture(s, seed, (144, 112))) == k  # another image size: the same type


def test_the_fit_does_not_depend_on_the_order_of_the_images():
    x, y = _features(range(4))
    order = np.random.default_rng(0).permutation(len(y))
    a, b = TypeClassifier.fit(x, y, 3), TypeClassifier.fit(x[order], y[order], 3)
    probe, _ = _features(range(50, 52))
    assert np.allclose(a.probabilities(probe), b.probabilities(probe), atol=1e-6)
    assert np.allclose(a.probabilities(probe).sum(1), 1.0)


def test_a_class_without_training_images_is_never_predicted():
    x, y = _features(range(4))
    keep = y != 1
    fit = TypeClassifier.fit(x[keep], y[keep], 3)
    probe, _ = _features(range(60, 64))
    p = fit.probabilities(probe)
    assert p[:, 1].max() < 1e-9 and set(p.argmax(1)) <= {0, 2}


def test_labels_outside_the_classes_and_unpaired_rows_are_refused():
    x, y = _features(range(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        TypeClassifier.fit(x, y, 2)
    with pytest.raises(ValueError, match="do not pair up"):
        TypeClassifier.fit(x, y[:-1], 3)
