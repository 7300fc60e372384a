"""Class-balanced image draws (``repeat_threshold``): the repeat factors, and the engine drawing by them."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from cellpipe import repeat_factors
from cellpipe.config import Train
from cellpipe.models.cellpose_flow import FlowSamples
from cellpipe.models.rcnn import CocoInstances
from cellpipe.training import engine
from cellpipe.training.runner import draws
from tests.conftest import TINY_MODEL

# ten images of one type each, as Kaggle's: six cort (3), three astro (2), one shsy5y (1), and one without cells
CATEGORIES = [frozenset({3})] * 6 + [frozenset({2})] * 3 + [frozenset({1})] + [frozenset()]


def test_a_rare_type_is_repeated_by_the_square_root_of_its_rarity():
    r = repeat_factors.repeat_factors(CATEGORIES, 0.5)
    # shares among the 11 images: cort 6/11 > 0.5 → 1; astro 3/11, shsy5y 1/11 → sqrt(0.5 / share)
    assert r[:6] == pytest.approx([1.0] * 6)
    assert r[6:9] == pytest.approx([math.sqrt(0.5 * 11 / 3)] * 3)
    assert r[9] == pytest.approx(math.sqrt(0.5 * 11))
    assert r[10] == 1.0  # an image without cells is drawn as often as a common type's


def test_an_image_of_two_types_takes_the_rarer_type_s_factor():
    r = repeat_factors.repeat_factors([frozenset({1})] * 3 + [frozenset({1, 2})], 1.0)
    assert r[:3] == pytest.approx([1.0] * 3) and r[3] == pytest.approx(2.0)  # type 2 in 1 of 4 images


def test_threshold_zero_draws_uniformly_as_before():
    assert repeat_factors.draw_probabilities(CATEGORIES, 0.0) is None
    assert repeat_factors.repeat_factors(CATEGORIES, 0.0) == pytest.approx(np.ones(len(CATEGORIES)))
    with pytest.raises(ValueError, match="not a share"):
        repeat_factors.repeat_factors(CATEGORIES, 1.5)


def test_shares_of_the_draws_move_towards_the_rare_types():
    p = repeat_factors.draw_probabilities(CATEGORIES, 0.5)
    before, after = repeat_factors.category_shares(CATEGORIES, None), repeat_factors.category_shares(CATEGORIES, p)
    assert before == pytest.approx({1: 1 / 11, 2: 3 / 11, 3: 6 / 11})
    assert after[1] > before[1] and after[2] > before[2] and after[3] < before[3]
    assert sum(after.values()) + p[10] == pytest.approx(1.0)  # the empty image holds the rest
    # shsy5y 2.345 / 13.41, astro 3 · 1.354 / 13.41, cort 6 / 13.41 (the empty image 1 / 13.41)
    assert draws(CATEGORIES, 0.5, {1: "shsy5y", 2: "astro", 3: "cort"}) == (
        "repeat factors at 0.5: share of images → of draws: shsy5y 9% → 17%, astro 27% → 30%, cort 55% → 45%"
    )


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    threshold=st.floats(0.0, 1.0, allow_nan=False),
)
def test_factors_are_at_least_one_and_never_favour_a_commoner_type(counts, threshold):
    """Single-type images: a factor ≥ 1, the same within a type, no smaller for a rarer type; p sums to 1."""
    categories = [frozenset({c}) for c, k in enumerate(counts) for _ in range(k)]
    r = repeat_factors.repeat_factors(categories, threshold)
    assert (r >= 1).all()
    by_type = {c: r[[i for i, cats in enumerate(categories) if c in cats]] for c in range(len(counts))}
    assert all(np.ptp(v) == 0 for v in by_type.values())
    for a in range(len(counts)):
        for b in range(len(counts)):
            if counts[a] < counts[b]:
                assert by_type[a][0] >= by_type[b][0]
    p = repeat_factors.draw_probabilities(categories, threshold)
    assert p is None if threshold == 0 else p.sum() == pytest.approx(1.0)


class Indices(Dataset):
    """A dataset whose items are their own indices and whose images hold ``CATEGORIES``."""

    def __len__(self) -> int:
        return len(CATEGORIES)

    def __getitem__(self, i: int) -> tuple[int, dict]:
        return i, {}

    def image_categories(self) -> list[frozenset[int]]:
        return CATEGORIES


def drawn(cfg: Train, data: Dataset, iters: int) -> Counter:
    batches = engine.Batches(data, cfg, 0)
    return Counter(i for k in range(iters) for i in batches[k][1][0])


def test_the_engine_draws_images_by_their_repeat_factors():
    cfg = Train(iters=800, batch_size=2, repeat_threshold=0.5)
    seen = drawn(cfg, Indices(), 800)  # 1600 draws (seeded): a share's standard error ≤ 0.0125
    p = repeat_factors.draw_probabilities(CATEGORIES, 0.5)
    assert seen[9] / 1600 == pytest.approx(p[9], abs=0.03)  # the shsy5y image, 0.175
    cort = sum(seen[i] for i in range(6)) / 1600
    assert cort == pytest.approx(p[:6].sum(), abs=0.035) and cort < 6 / 11 - 0.05  # uniformly ≈ 0.55, now 0.45


def test_uniform_draws_do_not_ask_the_dataset_for_categories():
    """The default draws as before: a dataset without ``image_categories`` still trains."""

    class Plain(Indices):
        image_categories = None  # type: ignore[assignment]

    seen = drawn(Train(iters=400, batch_size=2), Plain(), 400)
    assert set(seen) == set(range(len(CATEGORIES))) and max(seen.values()) < 2 * 800 / len(CATEGORIES)


def test_both_families_datasets_say_each_image_s_types(tiny_coco):
    expected = [frozenset(a["category_id"] for a in tiny_coco["annotations"] if a["image_id"] == im["id"])
                for im in tiny_coco["images"]]  # fmt: skip
    rcnn = CocoInstances(tiny_coco, TINY_MODEL.min_size, TINY_MODEL.max_size, hflip=False, vflip=False, crop_size=64)
    flow = FlowSamples(tiny_coco, TINY_MODEL, crop_size=64, hflip=False, vflip=False)
    assert rcnn.image_categories() == flow.image_categories() == expected
    assert any(expected)
