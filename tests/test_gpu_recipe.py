"""The GPU recipe, pretrained and offline, and the detectron2-parity switches of torchvision's Mask R-CNN.

No GPU here: both GPU profiles are validated and trained a few iterations on tiny data on
the CPU with their real architecture (R50-FPN); the pretrained one's download is replaced
by random weights (this machine is offline), which is the only thing not exercised.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from cellpipe import models, params_file, profiles
from cellpipe.config import Train
from cellpipe.errors import CellpipeError
from cellpipe.models import torchvision_heads, torchvision_maskrcnn
from cellpipe.models.rcnn import CocoInstances
from cellpipe.training import engine
from tests.conftest import REPO, params_text, tiny_model


def profile_params(name: str):
    params = yaml.safe_load(params_text())
    profiles.apply(params, (REPO / "profiles" / f"{name}.yaml").read_text())
    return params_file.validate(params, where=f"profiles/{name}.yaml")


@pytest.mark.parametrize("name", ["gpu", "gpu-offline"])
def test_gpu_profiles_train_a_few_iterations_on_tiny_data(name, tiny_coco, tmp_path, monkeypatch):
    p = profile_params(name)
    assert p.model.backbone == "resnet50" and p.model.fpn_channels == 256
    if name == "gpu":  # torchvision's ImageNet weights need a download: random weights stand in for them here
        assert p.pretrain.init == "imagenet" and p.model.norm == "frozen"
        monkeypatch.setattr(torchvision_maskrcnn, "_torchvision_weights", lambda model, which: f"{which} (test: random)")
    else:
        assert p.pretrain.init == "none" and p.model.norm == "group" and p.model.roi_align == "aligned"
    # the architecture as the profile has it; fewer sampled RoIs and proposals (the box head is 4 conv layers of 256)
    cfg = p.model.model_copy(update={"min_size": 128, "max_size": 160, "detections_per_img": 20, "rpn_post_nms_test": 50,
                                     "roi_batch_per_image": 64, "rpn_post_nms_train": 200})  # fmt: skip
    family = models.family(cfg)
    torch.manual_seed(0)
    model = family.build(cfg, 3)
    desc = family.initialise(model, p.pretrain.init)
    train = p.pretrain.model_copy(update={"iters": 2, "eval_every": 2, "warmup_iters": 1, "crop_size": 96})
    ds = CocoInstances(tiny_coco, cfg.min_size, cfg.max_size, crop_size=96)
    val = engine.val_images({**tiny_coco, "images": tiny_coco["images"][:1]})
    logs = []
    summary = engine.train(family, model, ds, val, train, cfg, tmp_path, classes=["shsy5y", "astro", "cort"], init=desc,
                           on_log=lambda step, m: logs.append(m))  # fmt: skip
    assert summary["iterations"] == 2 and (tmp_path / "best.pt").is_file()
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in logs if "train/loss" in m)


def test_frozen_norm_without_pretrained_weights_is_refused():
    params = yaml.safe_load(params_text())
    profiles.apply(params, (REPO / "profiles" / "gpu.yaml").read_text())
    params["pretrain"]["init"] = "none"
    with pytest.raises(CellpipeError, match="model.norm frozen keeps pretrained batch statistics fixed"):
        params_file.validate(params, where="p.yaml")


def test_the_parity_switches_change_what_they_say_and_nothing_else():
    """Defaults: torchvision's pooling, losses and initialisation (the committed results stay byte-identical);
    each switch: aligned pooling, detectron2's initialisation, another box-loss β."""
    torch.manual_seed(0)
    stock = models.build(tiny_model(), 3)
    assert type(stock.roi_heads.box_roi_pool).__name__ == "MultiScaleRoIAlign" and type(stock.rpn).__name__ != "CellRPN"
    torch.manual_seed(0)
    switched = models.build(tiny_model(roi_align="aligned", head_init="detectron2", box_loss_beta=0.0), 3)
    assert isinstance(switched.roi_heads.box_roi_pool, torchvision_heads.AlignedRoIAlign)
    assert isinstance(switched.roi_heads.mask_roi_pool, torchvision_heads.AlignedRoIAlign)
    assert switched.rpn.box_beta == 0.0 and switched.roi_heads.box_beta == 0.0
    assert stock.state_dict().keys() == switched.state_dict().keys()  # the same weights: checkpoints interchange
    std = float(switched.roi_heads.box_predictor.bbox_pred.weight.detach().std())
    assert 0.0005 < std < 0.002 and float(switched.roi_heads.box_predictor.bbox_pred.bias.detach().abs().sum()) == 0
    features = {"0": torch.randn(1, 16, 32, 40)}
    boxes = [torch.tensor([[3.2, 5.1, 40.7, 30.3]])]
    a = stock.roi_heads.box_roi_pool(features, boxes, [(128, 160)])
    b = switched.roi_heads.box_roi_pool(features, boxes, [(128, 160)])
    assert a.shape == b.shape and not torch.allclose(a, b)  # half a feature cell apart


def test_norm_layers_get_their_own_weight_decay():
    model = models.build(tiny_model(norm="group"), 3)
    one = engine.parameter_groups(model, Train())
    assert len(one) == 1
    groups = engine.parameter_groups(model, Train(weight_decay_norm=0.0))
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    norm = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == norm and norm
