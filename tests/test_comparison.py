"""``cellpipe compare``: two runs' per-image scores compared with a paired bootstrap (cellpipe.comparison)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import comparison
from cellpipe.errors import CellpipeError
from tests.conftest import run_cli
from tests.helpers import one_line_error

TYPES = ("astro", "cort", "shsy5y")


def table(scores, types=None, ids=None) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame({
        "image_id": ids if ids is not None else [f"im{i:03d}" for i in range(n)],
        "cell_type": types if types is not None else [TYPES[i % 3] for i in range(n)],
        "score": np.asarray(scores, dtype=float),
    })  # fmt: skip


scores = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=40)


def by_group(rows) -> dict[str, comparison.Row]:
    return {row.group: row for row in rows}


@settings(max_examples=40, deadline=None)
@given(scores)
def test_a_run_against_itself_differs_by_nothing(values):
    for row in comparison.paired(table(values), table(values), resamples=200):
        assert row.difference == 0 and row.low == 0 and row.high == 0 and row.b_better == row.a_better == 0


@settings(max_examples=40, deadline=None)
@given(scores, st.floats(0, 0.5))
def test_a_constant_gain_on_every_image_is_that_gain_exactly(values, gain):
    a = np.minimum(np.asarray(values), 0.5)
    rows = comparison.paired(table(a), table(a + gain), resamples=200)
    for row in rows:
        assert row.difference == pytest.approx(gain, abs=1e-9)
        assert row.low == pytest.approx(gain, abs=1e-9) and row.high == pytest.approx(gain, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=40), st.integers(0, 2**31))
def test_swapping_the_runs_mirrors_the_result_and_row_order_does_not_matter(pairs, seed):
    a, b = table([p[0] for p in pairs]), table([p[1] for p in pairs])
    forward = by_group(comparison.paired(a, b, resamples=300, seed=seed))
    backward = by_group(comparison.paired(b, a, resamples=300, seed=seed))
    shuffled = by_group(comparison.paired(a.iloc[::-1], b.sample(frac=1, random_state=1), resamples=300, seed=seed))
    for group, row in forward.items():
        assert backward[group].difference == pytest.approx(-row.difference, abs=1e-12)
        assert backward[group].low == pytest.approx(-row.high, abs=1e-12)
        assert backward[group].high == pytest.approx(-row.low, abs=1e-12)
        assert (backward[group].b_better, backward[group].a_better) == (row.a_better, row.b_better)
        assert shuffled[group] == row
        assert row.low <= row.difference + 1e-12 and row.difference <= row.high + 1e-12


def test_groups_are_all_images_then_each_type_with_their_own_means():
    a = table([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], types=["astro", "cort", "cort", "shsy5y", "astro", "cort"])
    b = a.assign(score=[0.2, 0.2, 0.1, 0.4, 0.7, 0.9])
    rows = comparison.paired(a, b, resamples=500)
    assert [r.group for r in rows] == ["all", "astro", "cort", "shsy5y"]
    got = by_group(rows)
    assert got["all"].images == 6 and got["all"].score_a == pytest.approx(0.35) and got["all"].score_b == pytest.approx(2.5 / 6)
    assert got["astro"].difference == pytest.approx(0.15) and (got["astro"].b_better, got["astro"].a_better) == (2, 0)
    assert got["cort"].images == 3 and (got["cort"].b_better, got["cort"].a_better) == (1, 1)
    assert got["shsy5y"].low == got["shsy5y"].high == 0  # one image, no change


def test_a_gain_on_some_images_only_has_an_interval_that_can_hold_zero():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.2, 0.4, 60)
    noisy = by_group(comparison.paired(table(a), table(a + rng.normal(0.0, 0.05, 60)), resamples=2000))["all"]
    steady = by_group(comparison.paired(table(a), table(a + 0.01 + rng.normal(0.0, 0.001, 60)), resamples=2000))["all"]
    assert noisy.low < 0 < noisy.high
    assert 0 < steady.low <= 0.01 <= steady.high


def test_the_bootstrap_holds_a_bounded_number_of_draws_at_a_time(monkeypatch):
    class Counting:
        """A generator that records how many indices each draw holds."""

        def __init__(self) -> None:
            self.rng, self.sizes = np.random.default_rng(0), []

        def integers(self, low, high, size):
            self.sizes.append(int(np.prod(size)))
            return self.rng.integers(low, high, size=size)

    monkeypatch.setattr(comparison, "_CHUNK_CELLS", 50)
    values, rng = np.linspace(0, 1, 20), Counting()
    means = comparison.bootstrap_means(values, rng, 1000)
    assert len(means) == 1000 and max(rng.sizes) <= 50 and sum(rng.sizes) == 1000 * 20
    assert means.min() >= 0 and means.max() <= 1 and abs(means.mean() - values.mean()) < 0.02


@pytest.mark.parametrize(
    "a, b, message",
    [
        (table([0.1, 0.2]), table([0.1, 0.2, 0.3]), "1 only in b (im002, …)"),
        (
            table([0.1, 0.2], ids=["x", "y"]),
            table([0.1, 0.2], ids=["x", "z"]),
            "1 shared, 1 only in a (y, …), 1 only in b (z, …)",
        ),
        (table([0.1, 0.2]), table([0.1, 0.2], types=["astro", "astro"]), "im001: cort in a, astro in b"),
        (table([]), table([]), "no images to compare"),
    ],
)
def test_tables_of_other_images_are_refused_with_counts(a, b, message):
    with pytest.raises(CellpipeError, match=None) as err:
        comparison.paired(a, b)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("image_id,cell_type\nim000,astro\n", "missing column(s) score"),
        ("image_id,cell_type,score\nim000,astro,0.2\nim001,cort,1.5\n", "line 3: image 'im001'"),
        ("image_id,cell_type,score\nim000,astro,0.2\nim001,cort,oops\n", "line 3"),
        ("image_id,cell_type,score\nim000,astro,0.2\nim000,astro,0.3\n", "line 3: image 'im000' appears twice"),
        ("", "not a per-image score table"),
    ],
)
def test_bad_tables_are_refused_by_file_and_line(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(CellpipeError) as err:
        comparison.read_per_image(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_compare_through_the_cli(tmp_path):
    a = table([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    a.assign(voted_type=a["cell_type"], n_true=3).to_csv(tmp_path / "a.csv", index=False)  # a score table has more columns
    a.assign(score=a["score"] + 0.05).to_csv(tmp_path / "b.csv", index=False)
    proc = run_cli(
        "compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--resamples", "300", "--out", str(tmp_path / "c.json")
    )
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stderr.split())  # the console writes to stderr
    assert "+0.0500" in shown and "images' noise only" in shown
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["resamples"] == 300 and [g["group"] for g in saved["groups"]] == ["all", *TYPES]
    assert saved["groups"][0]["difference"] == pytest.approx(0.05) and saved["groups"][0]["b_better"] == 6

    a.iloc[:4].to_csv(tmp_path / "short.csv", index=False)
    proc = run_cli("compare", str(tmp_path / "a.csv"), str(tmp_path / "short.csv"), "--out", str(tmp_path / "d.json"))
    one_line_error(proc, "4 shared, 2 only in", "a.csv")
    assert not (tmp_path / "d.json").exists()
    proc = run_cli("compare", str(tmp_path / "a.csv"), str(tmp_path / "missing.csv"))
    one_line_error(proc, "missing.csv", "no such file")
    assert run_cli("compare", str(tmp_path / "a.csv"), "--resamples", "0").returncode == 2
