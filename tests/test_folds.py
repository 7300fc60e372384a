"""Cross-validation: fold assignment, cross-fitted thresholds, fold ensembling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import ensemble, folds, prediction_table, thresholds
from cellpipe.config import CELL_TYPES
from cellpipe.errors import CellpipeError
from cellpipe.instances import Instances


@st.composite
def image_tables(draw) -> pd.DataFrame:
    n_samples = draw(st.integers(1, 25))
    rows = []
    for s in range(n_samples):
        cell_type = draw(st.sampled_from(CELL_TYPES))
        frames = draw(st.integers(1, 4))
        sample = "" if draw(st.booleans()) and frames == 1 else f"s{s}"  # images without a sample are their own group
        rows += [{"image_id": f"i{s}_{f}", "cell_type": cell_type, "sample_id": sample} for f in range(frames)]
    return pd.DataFrame(rows)


@settings(max_examples=150, deadline=None)
@given(image_tables(), st.integers(1, 5), st.sampled_from([0.0, 0.15, 0.3]), st.integers(0, 3))
def test_every_image_lands_in_one_fold_and_no_sample_is_split(images, k, lockbox, seed):
    fold = folds.assign(images, k, lockbox, 0.2, seed)
    assert len(fold) == len(images) and fold.index.equals(images.index)  # exactly one fold per image
    allowed = {folds.LOCKBOX, *range(k)} | ({folds.TRAIN_ONLY} if k == 1 else set())
    assert set(fold) <= allowed
    group = folds.groups(images)
    assert (fold.groupby(group).nunique() == 1).all()  # a sample never straddles two folds (or fold and lockbox)
    assert folds.assign(images, k, lockbox, 0.2, seed).equals(fold)  # seeded: the same every time
    if lockbox == 0:
        assert folds.LOCKBOX not in set(fold)
    for _, f in fold.groupby(images["cell_type"]):
        n_groups = group[f.index].nunique()
        kept = f[f != folds.LOCKBOX]
        assert group[kept.index].nunique() >= min(n_groups, 2 if k == 1 else 1)  # the lockbox leaves enough to learn from
        if k == 1 and group[kept.index].nunique() >= 2:
            assert (kept == 0).any() and (kept == folds.TRAIN_ONLY).any()  # validated on and trained on


def test_folds_are_stratified_and_balanced():
    images = pd.DataFrame(
        {
            "image_id": [f"i{j}" for j in range(60)],
            "cell_type": ["cort"] * 30 + ["astro"] * 15 + ["shsy5y"] * 15,
            "sample_id": [""] * 60,
        }
    )
    fold = folds.assign(images, 3, 0.2, 0.2, seed=0)
    lockbox = fold == folds.LOCKBOX
    assert lockbox[images["cell_type"] == "cort"].sum() == 6 and lockbox.sum() == 12  # 20 % of each type
    counts = pd.crosstab(images.loc[~lockbox, "cell_type"], fold[~lockbox])
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all(), counts  # each type spread evenly over the folds


def test_select_holds_out_one_fold_and_names_an_empty_one():
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "fold": f} for i, f in enumerate([0, 1, 0, 1, -1])],
        "annotations": [{"id": 10 + i, "image_id": i} for i in range(5)],
        "categories": [],
    }
    train, val = folds.select(data, 1, where="folds.json")
    assert [im["id"] for im in val["images"]] == [1, 3] and [a["image_id"] for a in val["annotations"]] == [1, 3]
    assert [im["id"] for im in train["images"]] == [0, 2, 4]
    with pytest.raises(CellpipeError, match=r"fold 2 has no images \(the file holds folds \[0, 1\]\)"):
        folds.select(data, 2, where="folds.json")
    with pytest.raises(CellpipeError, match="has no valid 'fold'"):
        folds.select({"images": [{"id": 1, "file_name": "a.png"}]}, 0, where="val.json")


def sweep_rows(best: dict[str, float]) -> pd.DataFrame:
    """Per-image sweep rows where image i's score peaks at threshold best[i] (all cort)."""
    rows = []
    for image_id, t_best in best.items():
        for t in (0.1, 0.5, 0.9):
            rows.append({"image_id": image_id, "cell_type": "cort", "threshold": t, "box_nms_iou": 1.0, "min_size": 0, "grow": 0,
                         "score": 1.0 - abs(t - t_best), "tp": 0, "fp": 0, "fn": 0})  # fmt: skip
    return pd.DataFrame(rows)


def test_cross_fitted_thresholds_never_use_the_fold_s_own_predictions():
    """Fold 0 is planted: its many images peak at 0.9, every other image at 0.1. If fold 0's own
    rows leaked into its thresholds they would choose 0.9 (fold 0 outweighs the others)."""
    fold_of = {f"a{j}": 0 for j in range(10)} | {f"b{j}": 1 for j in range(3)} | {f"c{j}": 2 for j in range(3)}
    best = {i: (0.9 if f == 0 else 0.1) for i, f in fold_of.items()}
    rows = sweep_rows(best)
    per_fold = thresholds.cross_fit(rows, fold_of, [0, 1, 2], list(CELL_TYPES), fallback=0.5)
    assert per_fold[0].threshold("cort") == 0.1  # chosen on folds 1 and 2 only
    assert thresholds.choose(thresholds.aggregate(rows), list(CELL_TYPES), 0.5).threshold("cort") == 0.9  # fold 0 wins
    assert per_fold[1].threshold("cort") == 0.9 and per_fold[2].threshold("cort") == 0.9  # the others see fold 0
    assert per_fold[0].threshold("astro") == 0.5  # no astro images anywhere: the fallback
    with pytest.raises(CellpipeError, match="has no fold"):
        thresholds.cross_fit(rows, {"a0": 0}, [0], list(CELL_TYPES), 0.5)


SHAPE = (16, 16)


def box(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[r0:r1, c0:c1] = True
    return m.ravel()


def inst(masks, scores, labels) -> Instances:
    return Instances(sp.csr_matrix(np.array(masks, np.float32)), np.array(scores, np.float32), np.array(labels), SHAPE)


def fold_predictions(*per_image: Instances) -> prediction_table.Predictions:
    pred = prediction_table.to_frame([(f"im{j}", p) for j, p in enumerate(per_image)], list(CELL_TYPES))
    return prediction_table.Predictions(pred.detections, pred.sizes, "<fold>")


def test_ensembling_identical_models_returns_the_same_instances():
    a, b, c = box(0, 5, 0, 5), box(8, 12, 8, 14), box(0, 3, 10, 16)
    one = fold_predictions(inst([a, b], [0.9, 0.4], [1, 3]), inst([c], [0.7], [2]))
    merged = ensemble.combine([one, one, one], iou_threshold=0.5)
    for got, want in zip(merged.select(["im0", "im1"]), one.select(["im0", "im1"])):
        assert (got.masks != want.masks).nnz == 0
        assert got.scores.tolist() == pytest.approx(want.scores.tolist()) and got.labels.tolist() == want.labels.tolist()


def test_a_cell_found_by_one_fold_of_three_keeps_a_third_of_its_score_or_goes():
    a, b = box(0, 5, 0, 5), box(8, 12, 8, 14)
    full, part = fold_predictions(inst([a, b], [0.9, 0.6], [1, 1])), fold_predictions(inst([a], [0.6], [1]))
    merged = ensemble.combine([full, part, part], iou_threshold=0.5).select(["im0"])[0]
    assert merged.scores.tolist() == pytest.approx([0.7, 0.2])  # (0.9 + 0.6 + 0.6) / 3; 0.6 / 3
    strict = ensemble.combine([full, part, part], iou_threshold=0.5, min_agreement=0.5).select(["im0"])[0]
    assert strict.scores.tolist() == pytest.approx([0.7])


def test_ensembling_folds_that_predicted_different_images_is_an_error():
    a = box(0, 5, 0, 5)
    with pytest.raises(CellpipeError, match="different images"):
        ensemble.combine(
            [fold_predictions(inst([a], [0.9], [1])), fold_predictions(inst([a], [0.9], [1]), inst([a], [1], [1]))], 0.5
        )


def test_out_of_fold_predictions_of_two_folds_for_one_image_are_an_error():
    a = box(0, 5, 0, 5)
    one = fold_predictions(inst([a], [0.9], [1]))
    assert set(ensemble.concat([one]).sizes) == {"im0"}
    with pytest.raises(CellpipeError, match="out of fold for two models"):
        ensemble.concat([one, one])


def test_tables_scored_differently_are_not_combined_and_their_scores_travel(tmp_path):
    """Folds predicted × maskness² beside one predicted without: refused by name, in the merge and the out-of-fold
    concatenation; tables that agree keep what their scores are through both, and through a file."""
    a = box(0, 5, 0, 5)
    plain, weighted = fold_predictions(inst([a], [0.9], [1])), fold_predictions(inst([a], [0.6], [1]))
    weighted.scores, weighted.where = "× maskness^2", "<weighted>"
    with pytest.raises(CellpipeError, match="different scores") as err:
        ensemble.combine([weighted, plain], 0.5)
    assert "scores × maskness^2" in str(err.value) and "the model's own scores" in str(err.value)
    other = fold_predictions(inst([a], [0.9], [1]))
    other.sizes = {"im1": SHAPE}
    other.detections = other.detections.assign(image_id="im1")
    with pytest.raises(CellpipeError, match="different scores"):
        ensemble.concat([weighted, other])
    other.scores = "× maskness^2"
    assert ensemble.concat([weighted, other]).scores == "× maskness^2"
    assert ensemble.combine([weighted, weighted], 0.5).scores == "× maskness^2"
    prediction_table.write(ensemble.combine([weighted, weighted], 0.5), tmp_path / "w.parquet")
    prediction_table.write(plain, tmp_path / "p.parquet")
    assert prediction_table.read(tmp_path / "w.parquet").scores == "× maskness^2"
    assert prediction_table.read(tmp_path / "p.parquet").scores == ""


def test_an_empty_lockbox_is_scored_as_nothing_and_says_so(tmp_path, tiny_kaggle):
    """``cv.lockbox_fraction: 0``: the lockbox file lists no images; its score is null, not 0."""
    import json

    from tests.conftest import decode_and_split, run_cli, write_params

    decode_and_split(tiny_kaggle, tmp_path, write_params(tmp_path / "p.yaml", lambda p: p["cv"].update(lockbox_fraction=0.0)))
    assert json.loads((tmp_path / "lockbox.json").read_text())["images"] == []
    prediction_table.write(
        prediction_table.Predictions(prediction_table.to_frame([]).detections, {}, "<none>"), tmp_path / "lb.parquet"
    )
    (tmp_path / "th.json").write_text(json.dumps({"score_threshold": {}}))
    proc = run_cli("score", "--predictions", str(tmp_path / "lb.parquet"), "--val", str(tmp_path / "lockbox.json"),
                   "--truth", str(tmp_path / "a.parquet"), "--thresholds", str(tmp_path / "th.json"),
                   "--out", str(tmp_path / "s.json"), "--per-iou-out", str(tmp_path / "piou.csv"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["map_iou"] is None and summary["images"] == 0 and "lists no images" in summary["note"]
    assert summary["thresholds"] == f"chosen on {tmp_path / 'th.json'}"
    assert (tmp_path / "piou.csv").read_text().startswith("iou_threshold,all,")


def test_an_empty_report_is_labelled_with_the_thresholds_it_would_have_used():
    from cellpipe import reports

    fixed = reports.empty("fixed", "t.json", "x lists no images", fixed=0.4, scores="× maskness^2")
    assert fixed.summary == {"map_iou": None, "images": 0, "note": "x lists no images",
                             "thresholds": "fixed 0.4 for every class, on scores × maskness^2"}  # fmt: skip
    assert reports.empty("fixed", "t.json", "n").summary["thresholds"] == "fixed 0.5 for every class"
    for rule in ("chosen", "cross-fitted"):
        assert reports.empty(rule, "t.json", "n", fixed=0.4).summary["thresholds"] == "chosen on t.json"
    assert fixed.per_image.empty and list(fixed.per_iou.columns) == ["iou_threshold", "all", *reports.CELL_TYPES]


def test_a_thresholds_file_says_which_scores_it_is_for_and_is_held_to_it(tmp_path):
    """``scores`` in a thresholds file: read into the choice, its per-fold choices and its fixed variant; a table
    scored otherwise is refused by name; a file without it (hand-written) is not checked; a non-string is an error."""
    import json

    from cellpipe import scoring

    path = tmp_path / "th.json"
    path.write_text(json.dumps({"score_threshold": {"astro": 0.3}, "per_fold": {"0": {"astro": 0.4}}, "scores": ""}))
    choice = scoring.read_thresholds(path)
    per_fold, _ = scoring.read_fold_thresholds(path)
    assert choice.scores == per_fold[0].scores == choice.fixed(0.5).scores == ""
    weighted = fold_predictions(inst([box(0, 5, 0, 5)], [0.6], [1]))
    scoring.check_scores(choice, path, weighted)
    weighted.scores = "× maskness^2"
    with pytest.raises(CellpipeError, match="chosen on the model's own scores, but <fold> has scores × maskness\\^2"):
        scoring.check_scores(per_fold[0], path, weighted)
    path.write_text(json.dumps({"score_threshold": {}}))
    scoring.check_scores(scoring.read_thresholds(path), path, weighted)  # not recorded: not checked
    path.write_text(json.dumps({"score_threshold": {}, "scores": 2}))
    with pytest.raises(CellpipeError, match="'scores' must be a string"):
        scoring.read_thresholds(path)
