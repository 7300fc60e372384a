"""Model construction, initialisation and the training engine on tiny data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellpipe import models, prediction_table
from cellpipe.config import Train
from cellpipe.errors import CellpipeError
from cellpipe.inference import predict_image
from cellpipe.models.rcnn import CocoInstances
from cellpipe.training import engine
from tests.conftest import TINY_MODEL, score_cli, tiny_model
from tests.helpers import one_line_error

FAMILY = models.family(TINY_MODEL)


def tiny_train(tiny_coco, out, iters, **kw):
    torch.manual_seed(0)
    model = models.build(TINY_MODEL, 3)
    ds = CocoInstances(tiny_coco, TINY_MODEL.min_size, TINY_MODEL.max_size, hflip=True, vflip=True)
    val = engine.val_images({**tiny_coco, "images": tiny_coco["images"][:1]})
    cfg = Train(iters=iters, eval_every=kw.pop("eval_every", 4), warmup_iters=2, lr=0.01, **kw)
    logs = []
    summary = engine.train(
        FAMILY,
        model,
        ds,
        val,
        cfg,
        TINY_MODEL,
        out,
        classes=["shsy5y", "astro", "cort"],
        init="none",
        on_log=lambda s, m: logs.append((s, m)),
    )
    return model, summary, logs


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = Train(iters=100, warmup_iters=10, warmup_factor=0.1)
    f = [engine.lr_factor(i, cfg) for i in range(101)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.0)


def test_loss_goes_down_and_best_is_kept(tiny_coco, tmp_path):
    _, summary, logs = tiny_train(tiny_coco, tmp_path, 12, eval_every=6)
    losses = [m["train/loss"] for _, m in logs if "train/loss" in m]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    evals = [(s, m["val/map_iou"]) for s, m in logs if "val/map_iou" in m]
    assert [s for s, _ in evals] == [6, 12]
    best_step, best = max(evals, key=lambda e: (e[1], -e[0]))
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["iteration"] == summary["best_iteration"] == best_step
    assert ckpt["best"] == pytest.approx(best)


class Interrupt(Exception):
    pass


def test_resume_continues_at_the_same_iteration_with_the_same_state(tiny_coco, tmp_path):
    full, _, _ = tiny_train(tiny_coco, tmp_path / "full", 8)
    torch.manual_seed(0)
    model = models.build(TINY_MODEL, 3)
    ds = CocoInstances(tiny_coco, TINY_MODEL.min_size, TINY_MODEL.max_size, hflip=True, vflip=True)
    val = engine.val_images({**tiny_coco, "images": tiny_coco["images"][:1]})
    cfg = Train(iters=8, eval_every=4, warmup_iters=2, lr=0.01)

    def kill_at_4(step, metrics):
        if "val/map_iou" in metrics and step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        engine.train(
            FAMILY,
            model,
            ds,
            val,
            cfg,
            TINY_MODEL,
            tmp_path / "part",
            classes=["shsy5y", "astro", "cort"],
            init="none",
            on_log=kill_at_4,
        )
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["iteration"] == 4
    torch.manual_seed(0)
    resumed = models.build(TINY_MODEL, 3)
    summary = engine.train(
        FAMILY, resumed, ds, val, cfg, TINY_MODEL, tmp_path / "part", classes=["shsy5y", "astro", "cort"], init="none"
    )
    assert summary["resumed_from"] == 4
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        if a.dtype.is_floating_point:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), k


def test_class_count_change_reinitialises_only_class_heads(tmp_path):
    one = models.build(TINY_MODEL, 1)
    torch.save({"model": one.state_dict()}, tmp_path / "c.pt")
    three = models.build(TINY_MODEL, 3)
    desc = FAMILY.initialise(three, str(tmp_path / "c.pt"))
    assert "class-specific heads re-initialised" in desc
    k = "backbone.body.conv1.weight"
    assert torch.equal(three.state_dict()[k], one.state_dict()[k])


def test_bad_checkpoints(tmp_path):
    model = models.build(TINY_MODEL, 3)
    with pytest.raises(CellpipeError, match="checkpoint is missing"):
        FAMILY.initialise(model, str(tmp_path / "nope.pt"))
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CellpipeError, match="unreadable or truncated"):
        FAMILY.initialise(model, str(tmp_path / "trunc.pt"))
    other = models.build(tiny_model(fpn_channels=32), 3)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CellpipeError, match="another architecture"):
        FAMILY.initialise(model, str(tmp_path / "other.pt"))


def test_offline_torchvision_weights_fail_clearly(monkeypatch):
    import torchvision.models._api as api

    def boom(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", boom)
    with pytest.raises(CellpipeError, match="could not download"):
        FAMILY.initialise(models.build(TINY_MODEL, 3), "imagenet")


def test_predict_returns_full_size_instances(tiny_coco):
    model = models.build(TINY_MODEL, 3)
    grey = np.full((520, 704), 128, np.uint8)
    inst = predict_image(models.family(TINY_MODEL), model, grey, device="cpu", mask_threshold=0.5, tta=True)
    assert inst.masks.shape[1] == 520 * 704
    assert len(inst.scores) == inst.masks.shape[0] == len(inst.labels)
    json.dumps(TINY_MODEL.fingerprint())


def test_apply_a_model_to_a_plain_folder_and_score_it(tiny_coco, tmp_path):
    """`cellpipe predict --skip-val` on any image folder, then `cellpipe score` against a train.csv."""
    import shutil

    import pandas as pd
    from PIL import Image

    from tests.conftest import run_cli

    tiny_train(tiny_coco, tmp_path / "model", 2, eval_every=2)
    folder = tmp_path / "mine"
    folder.mkdir()
    first = tiny_coco["images"][0]
    shutil.copy(first["path"], folder / f"{first['kaggle_id']}.png")
    Image.open(first["path"]).save(folder / "other.tif")
    (tmp_path / "p.yaml").write_text("predict: {tta: false, tta_iou: 0.5, detections_per_img: 0}\n")
    proc = run_cli(
        "predict",
        "--skip-val",
        "--checkpoint",
        str(tmp_path / "model/best.pt"),
        "--test-dir",
        str(folder),
        "--test-out",
        str(tmp_path / "preds.parquet"),
        "--submission-out",
        str(tmp_path / "sub.csv"),
        "--thresholds",
        str(tmp_path / "none.json"),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    assert proc.returncode == 0, proc.stderr
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert set(sub["id"]) == {first["kaggle_id"], "other"}
    # score against a train.csv-format truth of that image
    kaggle_dir = Path(first["path"]).parent.parent
    truth = pd.read_csv(kaggle_dir / "train.csv")
    truth[truth["id"] == first["kaggle_id"]].to_csv(tmp_path / "truth.csv", index=False)
    proc = score_cli(
        tmp_path, str(tmp_path / "preds.parquet"), str(tmp_path / "truth.csv"), thresholds={"score_threshold": {}, "min_size": 0}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["images"] == 1
    # fewer RPN proposals at predict time: applied and said (the checkpoint's are the model's)
    (tmp_path / "p5.yaml").write_text("predict: {rpn_proposals: 5, detections_per_img: 0}\n")
    proc = run_cli("predict", "--skip-val", "--checkpoint", str(tmp_path / "model/best.pt"), "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "p5.parquet"), "--params", str(tmp_path / "p5.yaml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "5 RPN proposals per image" in " ".join((proc.stdout + proc.stderr).split())
    assert pd.read_parquet(tmp_path / "p5.parquet").groupby("image_id").size().max() <= 5 * 3  # ≤ one per class each
    # scores × maskness²: the same detections and masks, each score lowered by its mask's confidence
    (tmp_path / "pm.yaml").write_text("predict: {maskness: 2, detections_per_img: 0}\n")
    proc = run_cli("predict", "--skip-val", "--checkpoint", str(tmp_path / "model/best.pt"), "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "pm.parquet"), "--params", str(tmp_path / "pm.yaml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "scores × maskness^2" in " ".join((proc.stdout + proc.stderr).split())
    plain = pd.read_parquet(tmp_path / "preds.parquet").set_index(["image_id", "rle"])["score"]
    rescored = pd.read_parquet(tmp_path / "pm.parquet").set_index(["image_id", "rle"])["score"]
    assert len(plain) > 0 and sorted(plain.index) == sorted(rescored.index)
    ratio = rescored / plain.reindex(rescored.index)
    assert (ratio <= 1 + 1e-6).all() and (ratio >= 0.25 - 1e-6).all() and (ratio < 1 - 1e-6).any()
    # the table says what its scores are, and a fixed threshold on them is labelled so (0.5 keeps fewer cells)
    assert prediction_table.read(tmp_path / "pm.parquet").scores == "× maskness^2"
    assert prediction_table.read(tmp_path / "preds.parquet").scores == ""
    proc = score_cli(tmp_path, tmp_path / "pm.parquet", tmp_path / "truth.csv", "--fixed-threshold", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["thresholds"] == "fixed 0.5 for every class, on scores × maskness^2"
    # thresholds chosen on the model's own scores are not applied to scores × maskness² (nor the other way round)
    plain_choice = {"score_threshold": {}, "scores": ""}
    proc = score_cli(tmp_path, tmp_path / "pm.parquet", tmp_path / "truth.csv", thresholds=plain_choice)
    one_line_error(proc, "th.json", "chosen on the model's own scores, but", "pm.parquet has scores × maskness^2")
    weighted_choice = {**plain_choice, "scores": "× maskness^2"}
    proc = score_cli(tmp_path, tmp_path / "pm.parquet", tmp_path / "truth.csv", thresholds=weighted_choice)
    assert proc.returncode == 0, proc.stderr
    # one detection per proposal, scored 1 − P(background) (predict.scores: cell): said, at most one per proposal,
    # and its table says so, so that thresholds chosen on the types' own scores are refused on it
    (tmp_path / "pc.yaml").write_text("predict: {scores: cell, maskness: 2, rpn_proposals: 5, detections_per_img: 0}\n")
    proc = run_cli("predict", "--skip-val", "--checkpoint", str(tmp_path / "model/best.pt"), "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "pc.parquet"), "--params", str(tmp_path / "pc.yaml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 − P(background), one detection per proposal" in " ".join((proc.stdout + proc.stderr).split())
    assert pd.read_parquet(tmp_path / "pc.parquet").groupby("image_id").size().max() <= 5
    assert prediction_table.read(tmp_path / "pc.parquet").scores == "cell: 1 − P(background) × maskness^2"
    proc = score_cli(tmp_path, tmp_path / "pc.parquet", tmp_path / "truth.csv", thresholds=weighted_choice)
    one_line_error(proc, "th.json", "chosen on scores × maskness^2, but", "has scores cell: 1 − P(background) × maskness^2")
    # a flow family's setting asked of Mask R-CNN is refused by name, and nothing is written
    (tmp_path / "pf.yaml").write_text("predict: {flow_threshold: 0.8}\n")
    proc = run_cli("predict", "--skip-val", "--checkpoint", str(tmp_path / "model/best.pt"), "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "pf.parquet"), "--params", str(tmp_path / "pf.yaml"))  # fmt: skip
    assert proc.returncode == 1 and "predict.flow_threshold" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pf.parquet").exists()
    # bad input fails clearly
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(
        "predict",
        "--skip-val",
        "--checkpoint",
        str(tmp_path / "model/best.pt"),
        "--test-dir",
        str(empty),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    assert proc.returncode == 1 and "no .png/.tif images" in proc.stderr
    proc = run_cli(
        "predict",
        "--skip-val",
        "--checkpoint",
        str(tmp_path / "nope.pt"),
        "--test-dir",
        str(folder),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    assert proc.returncode == 1 and "checkpoint is missing" in proc.stderr


def test_resume_fingerprint_holds_every_module_training_runs():
    """The resume fingerprint's code is the walk DVC's code deps use: an edit that reruns a stage restarts it."""
    from cellpipe.training.runner import training_code
    from stages.deps import REPO, closure

    code = {p.relative_to(REPO).as_posix() for p in training_code()}
    # what a training stage imports, less the stage modules (they only turn params into configs and inputs)
    for stage in ("finetune", "pretrain"):
        assert code == {p for p in closure(REPO / "stages" / f"{stage}.py") if p.startswith("cellpipe/")}
    # the helpers the family modules import, which shape the weights, are in it (they were not before)
    assert {"cellpipe/models/masks.py", "cellpipe/models/torchvision_heads.py", "cellpipe/metric.py"} <= code
    assert training_code() == sorted(training_code())


def test_editing_training_code_restarts_a_finished_run(tiny_coco, tmp_path, monkeypatch):
    """A finished ``last.pt`` is resumed (0 iterations run) by the same code, and not after a code edit."""
    from cellpipe.config import PostProcess
    from cellpipe.io import write_json
    from cellpipe.training import runner

    write_json(tiny_coco, tmp_path / "train.json")
    source = tmp_path / "masks.py"  # stands in for one module of the training code
    source.write_text("TARGETS = 'v1'\n")
    monkeypatch.setattr(runner, "training_code", lambda: [source])

    def train() -> dict:
        return runner.run_training(
            stage="finetune",
            train_json=tmp_path / "train.json",
            val_source=tmp_path / "train.json",
            out=tmp_path / "model",
            model_cfg=TINY_MODEL,
            train_cfg=Train(iters=2, eval_every=2, warmup_iters=1, lr=0.01),
            init="none",
            post=PostProcess(),
            single_class=False,
            val_images=1,
        )

    assert train()["resumed_from"] == 0
    assert train()["resumed_from"] == 2  # same code: the finished run is handed back
    source.write_text("TARGETS = 'v2'\n")
    assert train()["resumed_from"] == 0  # edited code: trained again
