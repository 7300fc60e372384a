"""The exponential moving average of the weights (``pretrain/finetune.ema``): the arithmetic, and in the engine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import models
from cellpipe.config import Params, Train
from cellpipe.training import engine
from tests.conftest import CLASSES, TINY_MODEL


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_the_average_moves_by_one_minus_the_ramped_decay_and_copies_integer_state():
    net = _net()
    average = engine.WeightAverage(net, 0.99)
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(2.0)
    net[1].num_batches_tracked.fill_(7)
    average.update()  # after 0 updates the decay is min(0.99, 1/10) = 0.1: 90 % of the way
    assert torch.allclose(average.model[0].weight, before + 0.9)
    assert torch.allclose(average.model[1].running_mean, torch.full((4,), 1.8))
    assert int(average.model[1].num_batches_tracked) == 7
    assert average.updates == 1 and average.current_decay() == pytest.approx(2 / 11)
    assert torch.equal(net[0].weight, before + 1.0)  # the model itself is not touched
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=40), st.floats(0.5, 0.999))
def test_the_average_is_a_convex_combination_of_the_weights_it_saw(values, decay):
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(values[0])
    average = engine.WeightAverage(net, decay)
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        average.update()
    a = float(average.model.weight)
    assert min(values) - 1e-4 <= a <= max(values) + 1e-4
    if len(set(values)) == 1:
        assert a == pytest.approx(values[0], abs=1e-5)


def test_the_switch_is_validated():
    assert Params.model_validate({"finetune": {"ema": 0.999}}).finetune.ema == 0.999
    with pytest.raises(ValueError):
        Params.model_validate({"finetune": {"ema": 1.0}})


def _train(tiny_coco, out, ema: float, eval_every: int, on_step=None) -> tuple[dict, dict]:
    """6 iterations of the tiny model from seed 0: (summary, last.pt)."""
    family = models.family(TINY_MODEL)
    torch.manual_seed(0)
    model = family.build(TINY_MODEL, len(CLASSES))
    ds = family.dataset(tiny_coco, TINY_MODEL, Train(crop_size=64))
    val = engine.val_images({**tiny_coco, "images": tiny_coco["images"][:1]})
    cfg = Train(iters=6, eval_every=eval_every, warmup_iters=1, lr=0.01, crop_size=64, eval_score_threshold=0.0, ema=ema)
    summary = engine.train(family, model, ds, val, cfg, TINY_MODEL, out, classes=CLASSES, init="none", on_step=on_step)
    return summary, torch.load(out / "last.pt", weights_only=True)


def test_the_engine_keeps_the_average_and_trains_the_same_model(tiny_coco, tmp_path):
    """With ``ema`` on, best.pt holds the average, last.pt both; the trained weights are those of a run without it."""
    _, plain_last = _train(tiny_coco, tmp_path / "plain", 0.0, eval_every=6)
    _, last = _train(tiny_coco, tmp_path / "ema", 0.9, eval_every=6)
    best = torch.load(tmp_path / "ema" / "best.pt", weights_only=True)
    assert plain_last["ema"] is None and last["ema_updates"] == 6
    for k, v in plain_last["model"].items():
        assert torch.equal(v, last["model"][k]), k  # the average draws no random numbers and changes no weight
    for k, v in last["ema"].items():
        assert torch.equal(v, best["model"][k]), k  # the one evaluation (iteration 6) kept the average
    moved = [k for k, v in last["ema"].items() if v.is_floating_point() and not torch.equal(v, last["model"][k])]
    assert len(moved) > len(last["ema"]) // 2


class _Killed(Exception):
    pass


def test_a_resumed_run_carries_the_average_on(tiny_coco, tmp_path):
    """Killed after its evaluation at 3 and run again, a run resumes the average and ends where an uninterrupted one does."""

    def kill_at_4(done, total, loss, lr):
        if done == 4:
            raise _Killed

    _, whole = _train(tiny_coco, tmp_path / "whole", 0.8, eval_every=3)
    with pytest.raises(_Killed):
        _train(tiny_coco, tmp_path / "split", 0.8, eval_every=3, on_step=kill_at_4)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["ema_updates"] == 3
    summary, resumed = _train(tiny_coco, tmp_path / "split", 0.8, eval_every=3)
    assert summary["resumed_from"] == 3 and resumed["ema_updates"] == whole["ema_updates"] == 6
    for k, v in whole["ema"].items():
        assert torch.allclose(v.float(), resumed["ema"][k].float(), rtol=0, atol=1e-6), k
