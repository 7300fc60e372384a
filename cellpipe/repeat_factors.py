"""Which training images a batch draws: uniformly, or more often where their cell type is rare.

Repeat-factor sampling (Gupta et al., *LVIS*, 2019; detectron2's ``RepeatFactorTrainingSampler``
and its ``DATALOADER.REPEAT_THRESHOLD``): an image's repeat factor is

    r = max over the categories c in the image of max(1, sqrt(t / f_c)),

``f_c`` the share of training images holding an instance of ``c``. A category in fewer than a
share ``t`` of the images is drawn more often, by the square root of how rare it is, so rare
types are seen more without repeating their few images as often as full balancing would.
Why it matters here: every Kaggle image holds one cell type, and on the real data the weakest
types are the rarest (fold 0's training images: cort ≈ 61 %, astro ≈ 25 %, shsy5y ≈ 14 %).

detectron2 repeats each image ``r`` times per epoch (rounded at random); the engine draws
each iteration's images independently, so here an image is drawn with probability
proportional to ``r`` — the same expected share of draws.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np


def image_categories(images: Sequence[Mapping], by_image: Mapping[int, Sequence[Mapping]]) -> list[frozenset[int]]:
    """The category ids of each image's instances, in the order of ``images`` (empty: no instances)."""
    return [frozenset(int(a["category_id"]) for a in by_image.get(im["id"], ())) for im in images]


def repeat_factors(categories: Sequence[Collection[int]], threshold: float) -> np.ndarray:
    """Each image's repeat factor (≥ 1; 1 for an image without instances) at ``threshold``."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"repeat threshold {threshold} is not a share in [0, 1]")
    n = len(categories)
    counts: dict[int, int] = {}
    for cats in categories:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    factor = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in counts.items()}
    return np.array([max((factor[c] for c in cats), default=1.0) for cats in categories], dtype=np.float64)


def draw_probabilities(categories: Sequence[Collection[int]], threshold: float) -> np.ndarray | None:
    """The probability of drawing each image (∝ its repeat factor); None at threshold 0 (uniform).

    None rather than equal weights keeps the default's draws exactly those of before: numpy
    draws differently with ``p`` given, even a uniform one.
    """
    if threshold == 0 or not categories:
        return None
    r = repeat_factors(categories, threshold)
    return r / r.sum()


def category_shares(categories: Sequence[Collection[int]], p: np.ndarray | None) -> dict[int, float]:
    """Each category's expected share of the draws (images holding it, weighted by ``p``), for the log."""
    weights = np.full(len(categories), 1 / max(1, len(categories))) if p is None else p
    shares: dict[int, float] = {}
    for cats, w in zip(categories, weights, strict=True):
        for c in cats:
            shares[c] = shares.get(c, 0.0) + float(w)
    return dict(sorted(shares.items()))
