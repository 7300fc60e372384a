"""``predict.scores: cell``: one detection per proposal, scored 1 − P(background), labelled with its likeliest type.

Checked against torchvision's own per-type detections on the same box-head outputs, and against a direct
computation from the softmax for any logits.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads

from cellpipe import models
from cellpipe.models.torchvision_heads import cell_detections
from tests.conftest import tiny_model

SHAPE = (100, 120)


def heads(score_thresh: float = 0.05, nms_thresh: float = 0.5, detections: int = 100) -> SimpleNamespace:
    """What both post-processings read of torchvision's RoI heads."""
    coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    return SimpleNamespace(box_coder=coder, score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections)


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_a_proposal_torn_between_two_types_is_one_cell_at_their_summed_score():
    """torchvision: the proposal comes out once per type, at 0.25 and 0.35; cell scores: once, at 0.6, as the likelier
    type."""
    h = heads(score_thresh=0.1)
    logits = logits_of([[0.4, 0.25, 0.35], [0.95, 0.03, 0.02]])  # the second: background
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [60.0, 50.0, 80.0, 70.0]])]
    deltas = torch.zeros(2, 3 * 4)
    boxes, scores, labels = RoIHeads.postprocess_detections(h, logits, deltas, proposals, [SHAPE])
    assert sorted(labels[0].tolist()) == [1, 2] and torch.allclose(scores[0].sort().values, torch.tensor([0.25, 0.35]))
    boxes, scores, labels = cell_detections(h, logits, deltas, proposals, [SHAPE])
    assert labels[0].tolist() == [2] and torch.allclose(scores[0], torch.tensor([0.6]), atol=1e-5)
    assert torch.equal(boxes[0], proposals[0][:1])  # zero deltas: the proposal itself


def test_one_box_nms_over_every_type():
    """Two proposals over one cell, likelier as different types: torchvision keeps both (NMS per type), cell scores
    keep the better one; apart, both stay."""
    h = heads(nms_thresh=0.5)
    logits = logits_of([[0.2, 0.7, 0.1], [0.3, 0.1, 0.6]])
    deltas = torch.zeros(2, 3 * 4)
    over = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0]])]
    assert len(RoIHeads.postprocess_detections(h, logits, deltas, over, [SHAPE])[1][0]) >= 2
    boxes, scores, labels = cell_detections(h, logits, deltas, over, [SHAPE])
    assert labels[0].tolist() == [1] and torch.allclose(scores[0], torch.tensor([0.8]))
    apart = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [60.0, 50.0, 80.0, 70.0]])]
    assert cell_detections(h, logits, deltas, apart, [SHAPE])[2][0].tolist() == [1, 2]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 12),
    classes=st.integers(1, 4),
    threshold=st.sampled_from([0.0, 0.05, 0.5, 0.9]),
    cap=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_cell_scores_are_one_minus_background_for_each_proposal(n, classes, threshold, cap, seed):
    """Without suppression (NMS at IoU 1): every proposal above the threshold once, in descending score, capped,
    scored 1 − P(background), labelled with its likeliest type and boxed by that type's regression, clipped (an
    empty box dropped, as torchvision drops it)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes + 1, generator=g) * 3
    deltas = torch.randn(n, (classes + 1) * 4, generator=g) * 0.2
    xy = torch.rand(n, 2, generator=g) * 100
    proposals = [torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], dim=1)]
    h = heads(score_thresh=threshold, nms_thresh=1.0, detections=cap)
    boxes, scores, labels = (x[0] for x in cell_detections(h, logits, deltas, proposals, [SHAPE]))
    probs = torch.softmax(logits, -1).numpy()
    cell, likeliest = 1 - probs[:, 0], probs[:, 1:].argmax(1) + 1
    decoded = h.box_coder.decode(deltas, proposals).reshape(n, classes + 1, 4)[torch.arange(n), torch.as_tensor(likeliest)]
    decoded[:, 0::2] = decoded[:, 0::2].clamp(0, SHAPE[1])
    decoded[:, 1::2] = decoded[:, 1::2].clamp(0, SHAPE[0])
    sides = (decoded[:, 2:] - decoded[:, :2]).numpy()
    kept = [i for i in np.argsort(-cell, kind="stable") if cell[i] > threshold and sides[i].min() >= 1e-2][:cap]
    assert len(scores) == len(kept) == len(labels) == len(boxes)
    np.testing.assert_allclose(scores.numpy(), cell[kept], atol=1e-5)
    assert (scores.numpy()[:, None] >= probs[kept, 1:] - 1e-6).all()  # never below any one type's probability
    np.testing.assert_array_equal(labels.numpy(), likeliest[kept])
    torch.testing.assert_close(boxes, decoded[torch.as_tensor(kept, dtype=torch.long)])


def test_a_built_model_predicts_one_cell_per_proposal_when_asked():
    """The family's limits switch it on and read it back; the model's detections never outnumber its proposals
    (torchvision's can reach one per type each); off again, the model is torchvision's."""
    torch.manual_seed(0)
    cfg = tiny_model(box_score_thresh=0.0)
    family = models.family(cfg)
    model = models.build(cfg, 3).eval()
    grey = np.random.default_rng(0).integers(0, 255, (520, 704), dtype=np.uint8)
    assert family.limits(model).cell_scores is False
    family.set_limits(model, replace(family.limits(model), proposals=6, detections_per_img=100))
    plain = family.predict(model, grey, device="cpu", mask_threshold=0.5)
    family.set_limits(model, replace(family.limits(model), cell_scores=True))
    assert family.limits(model).cell_scores is True
    cells = family.predict(model, grey, device="cpu", mask_threshold=0.5)
    assert 0 < len(cells.scores) <= 6 < len(plain.scores)
    assert cells.scores.max() >= plain.scores.max()
    family.set_limits(model, replace(family.limits(model), cell_scores=False))
    again = family.predict(model, grey, device="cpu", mask_threshold=0.5)
    np.testing.assert_array_equal(again.scores, plain.scores)
