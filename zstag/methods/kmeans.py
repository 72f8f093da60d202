"""A tiny deterministic k-means for grouping label vectors.

LESA's "one attention per cluster" variant groups the seen labels by their semantic vectors. The
clusters decide which parameters exist and which module scores which label, so they must come out
the same every time a model is rebuilt from its config: no random initialisation. We seed with
farthest-point traversal (start at the point nearest the mean, then repeatedly take the point
farthest from every centroid chosen so far) and run Lloyd's iterations to a fixed point.
"""

from __future__ import annotations

import torch


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the Euclidean-nearest centroid of each point; ties go to the lower index."""
    return torch.cdist(points, centroids).argmin(dim=1)


def kmeans(points: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster `points` (N, D) into `k` groups.

    Returns the centroids (k, D) and each point's cluster (N,), the latter always the nearest
    centroid, so a new point is assigned by the same rule (`nearest`) as the points clustered.
    A cluster that empties keeps its previous centroid rather than being re-seeded at random.
    """
    x = points.detach().float()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points, got k={k}")
    first = int(torch.cdist(x, x.mean(0, keepdim=True)).squeeze(1).argmin())
    chosen = [first]
    gap = torch.cdist(x, x[first : first + 1]).squeeze(1)  # distance to the nearest chosen seed
    for _ in range(1, k):
        far = int(gap.argmax())
        chosen.append(far)
        gap = torch.minimum(gap, torch.cdist(x, x[far : far + 1]).squeeze(1))
    centroids = x[chosen].clone()
    assign = nearest(x, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        updated = nearest(x, centroids)
        if torch.equal(updated, assign):
            break
        assign = updated
    return centroids, assign
