"""Merging several sets of detections of one image into one: flip passes (TTA) and fold models.

Both are the same problem: each pass (a flip, or one of the K fold models) proposes
scored instances; one cell should come out once, with a score that says how many passes
agreed. Detections of different passes whose masks overlap above an IoU are one cell
(greedy, by descending score, at most one detection per pass). A cell's score is the
mean over *all* passes, a pass that missed it counting 0 — a detection seen by one
model of five keeps a fifth of its score — and its mask holds the pixels of at least
half of its detections (the majority of the binary masks, i.e. their mean thresholded at
0.5: predictions files keep binary masks, not probabilities).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellpipe.instances import Instances
from cellpipe.metric import iou_matrix


def merge(parts: list[Instances], iou_threshold: float, min_agreement: float = 0.0) -> Instances:
    """One image's detections from several passes → one set (see the module doc).

    ``min_agreement``: keep a cell only when at least this share of the passes found it.
    """
    n_passes = len(parts)
    shape = parts[0].shape
    masks = sp.vstack([p.masks for p in parts]).tocsr()
    scores = np.concatenate([p.scores for p in parts]).astype(np.float64)
    labels = np.concatenate([p.labels for p in parts])
    source = np.concatenate([np.full(len(p.scores), k) for k, p in enumerate(parts)])
    order = np.argsort(-scores, kind="stable")
    masks, scores, labels, source = masks[order], scores[order], labels[order], source[order]
    iou = iou_matrix(masks, masks) if len(scores) else np.zeros((0, 0))
    used = np.zeros(len(scores), bool)
    rows, out_scores, out_labels = [], [], []
    for i in range(len(scores)):
        if used[i]:
            continue
        members = [i]
        used[i] = True
        for k in range(n_passes):
            if k == source[i]:
                continue
            cand = np.flatnonzero(~used & (source == k) & (iou[i] > iou_threshold))
            if len(cand):
                j = cand[np.argmax(iou[i, cand])]
                members.append(j)
                used[j] = True
        if len(members) < min_agreement * n_passes - 1e-9:
            continue
        votes = (sp.csr_matrix(np.ones((1, len(members)), np.float32)) @ masks[members]).tocsr()
        votes.data = (votes.data * 2 >= len(members)).astype(np.float32)
        votes.eliminate_zeros()
        rows.append(votes)
        out_scores.append(scores[members].sum() / n_passes)
        out_labels.append(labels[i])
    if not rows:
        return Instances(
            sp.csr_matrix((0, shape[0] * shape[1]), dtype=np.float32),
            np.zeros(0, np.float32),
            labels[:0],
            shape,
            parts[0].image_id,
        )
    merged = sp.vstack(rows).tocsr()
    keep = np.diff(merged.indptr) > 0
    return Instances(
        merged[keep], np.asarray(out_scores, np.float32)[keep], np.asarray(out_labels)[keep], shape, parts[0].image_id
    )
