"""The backend contract: what the engine, predict and checkpoints need from a Mask R-CNN.

Every contract test runs on torchvision always and on detectron2 when it is importable
(skipped, with the reason shown, when it is not: detectron2 is an optional install).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cellpipe import models
from cellpipe.config import Train
from cellpipe.errors import CellpipeError
from cellpipe.inference import predict_image
from cellpipe.models import Limits
from cellpipe.models import detectron2_maskrcnn as d2
from cellpipe.models.rcnn import CocoInstances
from cellpipe.training import engine
from tests.conftest import run_cli, tiny_model, write_params

NEEDS_D2 = pytest.mark.skipif(not d2.available(), reason="detectron2 is not installed (optional backend, README)")
BACKENDS = ["torchvision", pytest.param("detectron2", marks=NEEDS_D2)]
CLASSES = ["shsy5y", "astro", "cort"]


def tiny(backend: str, **kw):
    # 32 channels: detectron2's GroupNorm has 32 groups
    return tiny_model(**{"backend": backend, "fpn_channels": 32, "mask_head_channels": 32, **kw})


def batch(tiny_coco, cfg):
    ds = CocoInstances(tiny_coco, cfg.min_size, cfg.max_size, crop_size=96)
    torch.manual_seed(0)
    return tuple(zip(ds[0], ds[1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_gives_finite_losses_and_gradients(backend, tiny_coco):
    cfg = tiny(backend)
    model = models.build(cfg, 3).train()
    images, targets = batch(tiny_coco, cfg)
    losses = model(list(images), list(targets))
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses) or {
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
        "loss_rpn_cls",
        "loss_rpn_loc",
    } <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_gives_full_size_instances_and_obeys_test_limits(backend):
    torch.manual_seed(0)
    model = models.build(tiny(backend, box_score_thresh=0.0), 3).eval()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (520, 704), dtype=np.uint8)
    family = models.family(tiny(backend))
    inst = predict_image(family, model, grey, device="cpu", mask_threshold=0.5, tta=True)
    assert inst.masks.shape == (len(inst.scores), 520 * 704) and len(inst.labels) == len(inst.scores)
    assert set(np.unique(inst.labels)) <= {1, 2, 3}
    family.set_limits(model, Limits(score_thresh=0.0, detections_per_img=5))
    cell_scores = False if backend == "torchvision" else None  # predict.scores: cell is torchvision's alone
    assert family.limits(model) == Limits(0.0, 5, 0.5, 100, maskness=0.0, cell_scores=cell_scores)
    family.set_limits(model, replace(family.limits(model), maskness=2.0))  # predict.maskness, read back
    assert family.limits(model).maskness == 2.0
    family.set_limits(model, replace(family.limits(model), proposals=7))
    assert family.limits(model).proposals == 7
    assert 0 < _proposals_seen(family, model, grey) <= 7  # the box head sees no more proposals than set
    assert len(family.predict(model, grey, device="cpu", mask_threshold=0.5).scores) <= 5
    family.set_limits(model, Limits(score_thresh=1.01, detections_per_img=50))
    assert len(family.predict(model, grey, device="cpu", mask_threshold=0.5).scores) == 0


def _proposals_seen(family, model, grey) -> int:
    """How many proposals the RPN hands the box head for one image."""
    rpn = model.rpn if hasattr(model, "rpn") else model.net.proposal_generator
    seen = []
    handle = rpn.register_forward_hook(lambda _m, _i, out: seen.append(len(out[0][0])))
    try:
        family.predict(model, grey, device="cpu", mask_threshold=0.5)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_checkpoints_reload_to_identical_predictions(backend, tiny_coco, tmp_path):
    cfg = tiny(backend)
    family = models.family(cfg)
    torch.manual_seed(0)
    model = models.build(cfg, 3)
    ds = CocoInstances(tiny_coco, cfg.min_size, cfg.max_size, hflip=True, crop_size=96)
    val = engine.val_images({**tiny_coco, "images": tiny_coco["images"][:1]})
    tcfg = Train(iters=4, eval_every=2, warmup_iters=1, lr=0.01, eval_score_threshold=0.0)
    summary = engine.train(family, model, ds, val, tcfg, cfg, tmp_path, classes=CLASSES, init="none")
    assert summary["iterations"] == 4 and (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    _, loaded, mcfg, classes = models.from_checkpoint(tmp_path / "last.pt", "cpu")
    assert mcfg.backend == backend and classes == CLASSES
    model.load_state_dict(last["model"])
    grey = np.asarray(val[0].grey)
    a = family.predict(model.eval(), grey, device="cpu", mask_threshold=0.5)
    b = family.predict(loaded, grey, device="cpu", mask_threshold=0.5)
    assert np.array_equal(a.scores, b.scores) and (a.masks != b.masks).nnz == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_count_change_reinitialises_only_class_heads(backend, tmp_path):
    one = models.build(tiny(backend), 1)
    torch.save({"model": one.state_dict(), "model_config": {}}, tmp_path / "c.pt")
    three = models.build(tiny(backend), 3)
    desc = models.family(tiny(backend)).initialise(three, str(tmp_path / "c.pt"))
    assert "class-specific heads re-initialised" in desc
    shared = [k for k, v in one.state_dict().items() if v.shape == three.state_dict()[k].shape and v.dtype.is_floating_point]
    assert all(torch.equal(three.state_dict()[k], one.state_dict()[k]) for k in shared)
    other = models.build(tiny(backend, fpn_channels=64), 3)
    torch.save({"model": other.state_dict(), "model_config": {}}, tmp_path / "other.pt")
    with pytest.raises(CellpipeError, match="another architecture"):
        models.family(tiny(backend)).initialise(three, str(tmp_path / "other.pt"))


def test_detectron2_selected_but_not_importable_fails_before_any_work(tmp_path):
    """A stand-in ``detectron2`` that cannot be imported: the error names the install command."""
    fake = tmp_path / "fake" / "detectron2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named detectron2._C')\n")
    write_params(tmp_path / "p.yaml", lambda p: p["model"].update(backend="detectron2"))
    env_path = f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    os.environ["PYTHONPATH"], saved = env_path, os.environ.get("PYTHONPATH")
    try:
        proc = run_cli(
            "finetune",
            "--train",
            str(tmp_path / "absent.json"),
            "--val",
            str(tmp_path / "absent.json"),
            "--out",
            str(tmp_path / "ft"),
            "--params",
            str(tmp_path / "p.yaml"),
        )
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert "detectron2 cannot be imported" in err and "pip install" in err
    assert "absent.json" not in err  # it failed before reading any input
    assert not (tmp_path / "ft").exists()


# ---------------------------------------------------------------- detectron2 only


@NEEDS_D2
def test_detectron2_checkpoints_initialise_with_class_head_reinit(tmp_path):
    """A detectron2 ``.pth`` (as DetectionCheckpointer writes it, e.g. LIVECell's) as ``finetune.init``."""
    from detectron2.checkpoint import DetectionCheckpointer

    src = models.build(tiny("detectron2"), 1)
    DetectionCheckpointer(src.net, save_dir=str(tmp_path)).save("livecell_like")
    dst = models.build(tiny("detectron2"), 3)
    family = models.family(tiny("detectron2"))
    desc = family.initialise(dst, str(tmp_path / "livecell_like.pth"))
    assert "detectron2" in desc and "class-specific heads re-initialised" in desc
    k = "net.backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(dst.state_dict()[k], src.state_dict()[k])
    wide = models.build(tiny("detectron2", fpn_channels=64), 3)
    with pytest.raises(CellpipeError, match="another architecture"):
        family.initialise(wide, str(tmp_path / "livecell_like.pth"))
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "livecell_like.pth").read_bytes()[:999])
    with pytest.raises(CellpipeError, match="unreadable or truncated"):
        family.initialise(dst, str(tmp_path / "trunc.pth"))


@NEEDS_D2
def test_detectron2_builds_model_zoo_configs():
    cfg = tiny("detectron2", d2_config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    model = models.build(cfg, 3)
    assert model.config.MODEL.RESNETS.DEPTH == 50 and model.config.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert model.config.TEST.DETECTIONS_PER_IMAGE == 50
    half = models.build(cfg.model_copy(update={"roi_positive_fraction": 0.5}), 3)
    assert model.config.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.25 and half.config.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.5
    with pytest.raises(CellpipeError, match="neither a YAML file nor"):
        models.build(cfg.model_copy(update={"d2_config": "nope.yaml"}), 3)


@pytest.mark.slow
@NEEDS_D2
def test_detectron2_backend_runs_the_whole_dag(tmp_path):
    """``model.backend: detectron2`` through ``dvc repro``: pretrain → finetune → predict → score → submit."""
    import json

    from tests.helpers import dvc, make_repo, ran_stages

    repo = make_repo(tmp_path, {"model": {"backend": "detectron2", "fpn_channels": 32, "mask_head_channels": 32}})
    out = dvc(repo, "repro")
    assert {"pretrain", "finetune@0", "predict@0", "ensemble", "thresholds", "score", "submit"} <= set(ran_stages(out.stdout))
    metrics = json.loads((repo / "metrics/oof.json").read_text())
    assert 0.0 <= metrics["map_iou"] <= 1.0
    ckpt = torch.load(repo / "models/finetune/fold0/best.pt", weights_only=True)
    assert ckpt["model_config"]["backend"] == "detectron2" and any(k.startswith("net.") for k in ckpt["model"])
    assert (repo / "models/finetune/fold0/live/metrics.json").is_file()
    assert (repo / "data/submission/submission.csv").read_text().startswith("id,predicted")


def test_cellpipe_imports_without_detectron2():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "import cellpipe.models, cellpipe.training.engine, cellpipe.inference, stages.cli\n"
        "from cellpipe.models import detectron2_maskrcnn as d2; assert not d2.available()\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@NEEDS_D2
def test_cellpipe_coco_registers_in_detectron2s_catalog(tmp_path, tiny_kaggle):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cellpipe import coco, tables

    ann, images = tables.build_tables(tables.read_train_csv(tiny_kaggle / "train.csv"), tiny_kaggle / "train")
    data = coco.build(images, ann)
    (tmp_path / "train.json").write_text(__import__("json").dumps(data))
    assert d2.register_coco("cellpipe_test_train", tmp_path / "train.json") == len(data["images"])
    records = DatasetCatalog.get("cellpipe_test_train")
    assert len(records) == len(data["images"])
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
    assert Path(records[0]["file_name"]).is_file()
    assert MetadataCatalog.get("cellpipe_test_train").thing_classes == ["shsy5y", "astro", "cort"]
