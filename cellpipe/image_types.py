"""An image's cell type from the whole image: a small classifier of its own, fitted on the training images.

Every image of the competition holds one cell type, and the type picks what comes after
(a flow model's scale, the per-class score threshold). The three types look nothing alike
at image level — astro cells are large and sparse with thin processes, cort small and
round, shsy5y small, dense and clumped — so a handful of global statistics separates
them better than a network's head trained on 256-px crops at each type's own scale,
which sees an image at another scale when it has to classify it (the flow family's
head called 10 of 16 real lockbox astro images something else; docs/experiments.md).

:func:`image_features` gives 22 numbers per image: the log power in 12 log-spaced
radial frequency bands (the sizes of what the image holds, independent of its
dimensions), 7 grey-level percentiles, the mean and spread of the gradient magnitude,
and the share of pixels beyond 2 σ. :class:`TypeClassifier` is a multinomial logistic
regression on the standardised features, L2-regularised and fitted by L-BFGS in double
precision, so the same images give the same classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_BANDS = 12
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
N_FEATURES = N_BANDS + len(PERCENTILES) + 3
# band edges in cycles per pixel, log-spaced from structures of ≈ 128 px down to 2 px
_EDGES = np.geomspace(1 / 128, 0.5, N_BANDS + 1)


def image_features(grey: np.ndarray) -> np.ndarray:
    """``N_FEATURES`` float64 statistics of a uint8 (H, W) image; finite for any image, even a flat one."""
    x = np.asarray(grey, np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {x.shape}")
    pct = np.percentile(x, PERCENTILES) / 255.0
    z = (x - x.mean()) / max(float(x.std()), 1.0)
    power = np.abs(np.fft.rfft2(z)) ** 2 / z.size
    fy = np.fft.fftfreq(z.shape[0])[:, None]
    fx = np.fft.rfftfreq(z.shape[1])[None, :]
    radius = np.sqrt(fy**2 + fx**2).ravel()
    band = np.digitize(radius, _EDGES) - 1  # -1 below the first edge, N_BANDS above the last
    inside = (band >= 0) & (band < N_BANDS)
    total = np.bincount(band[inside], weights=power.ravel()[inside], minlength=N_BANDS)
    count = np.bincount(band[inside], minlength=N_BANDS)
    spectrum = np.log10(total / np.maximum(count, 1) + 1e-6)
    gy, gx = np.gradient(z) if min(z.shape) > 1 else (np.zeros_like(z), np.zeros_like(z))
    grad = np.hypot(gy, gx)
    extra = [grad.mean(), grad.std(), float(np.mean(np.abs(z) > 2.0))]
    return np.concatenate([spectrum, pct, extra]).astype(np.float64)


@dataclass(frozen=True)
class TypeClassifier:
    """Standardise, then ``softmax(coef @ x + bias)``; ``mean``/``std`` (F,), ``coef`` (C, F), ``bias`` (C,)."""

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = 1e-4) -> TypeClassifier:
        """Fit on ``features`` (N, F) with class indices ``labels`` (N,) in [0, num_classes).

        A class without training images keeps a bias of −30 (never predicted); ``l2`` is the
        penalty per sample on the weights (not the biases), which keeps separable data finite.
        """
        x = np.asarray(features, np.float64)
        y = np.asarray(labels, np.int64)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"features {x.shape} and labels {y.shape} do not pair up")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got {y.min()}..{y.max()}")
        mean = x.mean(0)
        std = np.where(x.std(0) > 1e-9, x.std(0), 1.0)
        xs = torch.from_numpy((x - mean) / std)
        ys = torch.from_numpy(y)
        present = torch.from_numpy(np.bincount(y, minlength=num_classes) > 0)
        w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def loss() -> torch.Tensor:
            opt.zero_grad()
            logits = (xs @ w.T + b).masked_fill(~present, -30.0)
            value = torch.nn.functional.cross_entropy(logits, ys) + l2 * (w * w).sum()
            value.backward()
            return value

        opt.step(loss)
        bias = b.detach().masked_fill(~present, -30.0)
        return cls(mean, std, w.detach().numpy().copy(), bias.numpy().copy())

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of (N, F) features."""
        z = (np.atleast_2d(features) - self.mean) / self.std @ self.coef.T + self.bias
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, grey: np.ndarray) -> int:
        """The class index of one uint8 (H, W) image."""
        return int(self.probabilities(image_features(grey))[0].argmax())
