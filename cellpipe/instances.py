"""Scored instance masks of one image: what a model predicts, what is thresholded, scored and submitted.

Masks are a sparse ``(n, height·width)`` matrix (C order), so an image with a thousand
cells costs its cells' pixels, not a thousand full-size masks, and IoUs between two
sets are one sparse product (:func:`cellpipe.metric.iou_matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Instances:
    masks: sp.csr_matrix
    scores: np.ndarray
    labels: np.ndarray  # class ids from a model; class names once read back from a predictions file
    shape: tuple[int, int]  # (height, width) of the image
    image_id: str = ""

    def select(self, keep: np.ndarray) -> Instances:
        return Instances(self.masks[keep], self.scores[keep], self.labels[keep], self.shape, self.image_id)
