"""The training engine's pieces, each alone: batches, the step, the best keeper, resume."""

from __future__ import annotations

import pytest
import torch

from cellpipe import checkpoints, models
from cellpipe.config import Train
from cellpipe.errors import CellpipeError
from cellpipe.models.rcnn import CocoInstances
from cellpipe.training import engine
from tests.conftest import TINY_MODEL

FAMILY = models.family(TINY_MODEL)


def dataset(tiny_coco) -> CocoInstances:
    return CocoInstances(tiny_coco, TINY_MODEL.min_size, TINY_MODEL.max_size, hflip=True, vflip=True, crop_size=64)


def same_batch(a, b) -> bool:
    """The same crops, flips and targets; pixels equal up to float rounding (a worker sums with 1 thread)."""
    (ia, ta), (ib, tb) = a, b
    return all(torch.allclose(x, y, rtol=0, atol=1e-5) for x, y in zip(ia, ib)) and all(
        torch.equal(x[k], y[k]) for x, y in zip(ta, tb) for k in ("boxes", "labels", "masks")
    )


def test_an_iteration_s_batch_depends_on_the_iteration_only(tiny_coco):
    """Starting at 3 (a resume) gives iteration 3 the batch an uninterrupted run gives it."""
    cfg = Train(iters=6, batch_size=2, seed=4)
    full = engine.Batches(dataset(tiny_coco), cfg, 0)
    resumed = engine.Batches(dataset(tiny_coco), cfg, 3)
    assert len(full) == 6 and len(resumed) == 3
    assert resumed[0][0] == 3 and same_batch(resumed[0][1], full[3][1])
    assert not same_batch(full[0][1], full[1][1])


def test_worker_processes_build_the_same_batches(tiny_coco):
    cfg = Train(iters=4, batch_size=2, seed=1)
    alone = [(it, b) for it, b in engine.loader(dataset(tiny_coco), cfg, 0, torch.device("cpu"))]
    workers = [(it, b) for it, b in engine.loader(dataset(tiny_coco), cfg.model_copy(update={"workers": 2}), 0,
                                                  torch.device("cpu"))]  # fmt: skip
    assert [it for it, _ in alone] == [it for it, _ in workers] == [0, 1, 2, 3]
    assert all(same_batch(a, b) for (_, a), (_, b) in zip(alone, workers))


def test_a_diverging_step_stops_with_the_cure(tiny_coco):
    torch.manual_seed(0)
    model = FAMILY.build(TINY_MODEL, 3)
    cfg = Train(lr=1e12, warmup_iters=0)
    opt = engine.optimisation(model, cfg, torch.device("cpu"))
    batches = engine.Batches(dataset(tiny_coco), cfg, 0)
    with pytest.raises(CellpipeError, match="loss became non-finite at iteration .* lower the lr"):
        for k in range(10):
            images, targets = batches[k][1]
            engine.train_step(FAMILY, model, list(images), list(targets), opt, cfg, torch.device("cpu"), k)


def test_the_best_keeper_keeps_the_first_of_the_best(tmp_path):
    model = torch.nn.Linear(2, 2)
    keeper = engine.BestKeeper(tmp_path / "best.pt", {"classes": ["cell"]})
    assert keeper.offer(0.3, 10, model) and not keeper.offer(0.3, 20, model) and not keeper.offer(0.1, 30, model)
    assert keeper.offer(0.5, 40, model)
    saved = checkpoints.load(tmp_path / "best.pt")
    assert (saved["iteration"], saved["best"], saved["classes"]) == (40, 0.5, ["cell"])


def test_resume_needs_the_same_fingerprint(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = engine.optimisation(model, Train(), torch.device("cpu"))
    keeper = engine.BestKeeper(tmp_path / "best.pt", {"fingerprint": "A"}, 0.4, 7)
    engine.save_last(tmp_path / "last.pt", model, opt, 12, keeper)
    fresh = torch.nn.Linear(2, 2)
    cpu = torch.device("cpu")

    def resume(path, fingerprint):
        return engine.resume(path, fresh, engine.optimisation(fresh, Train(), cpu), fingerprint, cpu)

    assert resume(tmp_path / "last.pt", "A") == (12, 0.4, 7) and torch.equal(fresh.weight, model.weight)
    assert resume(tmp_path / "last.pt", "B") == (0, -1.0, -1)
    assert resume(tmp_path / "absent.pt", "A") == (0, -1.0, -1)
