"""The class graph of RGCN-PosVAE (Huang et al., BMVC 2020, Sec. 3.2 and 4.1), built fast and cached.

Nodes are labels (the vocabulary being scored plus the external classifier classes). Two nodes
are joined when the Wu-Palmer similarity of their WordNet nouns exceeds `wup_threshold` (0.5 in
the paper); every node has a self-loop. The graph is undirected (WUP is symmetric).

Deviation from the paper: labels that WordNet does not know (phrases with no WordNet entry
whose head noun is unknown too, brand-new words) are joined by the cosine similarity of their
semantic vectors instead, with its own threshold `cosine_threshold`: an edge between two nodes
uses WUP when both are in WordNet and cosine otherwise.

Without WordNet (no `data.noun`/`index.noun` in `--set wordnet=DIR`, $ZSTAG_WORDNET or
/usr/share/wordnet; see `zstag.methods.rgcn.wordnet.wordnet_dir`) the graph falls back to cosine
edges for every pair: two labels are joined when the cosine similarity of their semantic vectors
exceeds `cosine_threshold`. Scores then still depend on every label connected to a label in the
graph, but a label whose vector is far from all others is isolated (self-loop only) and neither
affects nor is affected by the rest of the vocabulary. One warning line says so
(`zstag.core.console.warn`), once per process and WordNet folder, however many graphs are built.

Speed: a user's vocabulary may hold 10,000 labels, i.e. 10^8 pairs, so WUP is never evaluated
pair by pair. With depth() the longest-path depth of `zstag.methods.rgcn.wordnet`,

    WUP(u, v) > t  <=>  there are senses i of u, j of v and a common ancestor a of both with
                        2 depth(a) > t (depth(i) + depth(j)).

For a fixed ancestor a only the shallowest sense of each label below a matters, m_u(a), so the
test becomes m_u(a) + m_v(a) <= s_max(a) with s_max a small integer table. Sorting each
ancestor's labels by m turns the valid partners of every label into a prefix, which numpy
enumerates without Python loops. Results are cached in memory (per label tuple) and on disk
(`<cache root>/graphs/<hash>.npz`, the root being $ZSTAG_CACHE or
platformdirs.user_cache_dir("zstag"); read with allow_pickle=False).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zstag.core import console
from zstag.core.atomic import atomic_write
from zstag.core.paths import cache_root
from zstag.methods.rgcn.wordnet import ENV_VAR, REQUIRED_FILES, WordNet, has_wordnet, load_wordnet, wordnet_dir

_PAIRS_PER_CHUNK = 1 << 22  # label pairs materialised at once while filling the adjacency
_MEMORY_CACHE_SIZE = 4
_memory_cache: OrderedDict[str, Graph] = OrderedDict()
_warned_missing: set[str] = set()


@dataclass(frozen=True)
class Graph:
    """An undirected graph with self-loops, as a symmetric edge list (both directions stored)."""

    rows: np.ndarray  # (E,) int64 source node of each directed edge
    cols: np.ndarray  # (E,) int64 target node
    num_nodes: int
    in_wordnet: np.ndarray  # (N,) bool: nodes whose edges to other WordNet nodes come from WUP

    @property
    def num_edges(self) -> int:
        return int(self.rows.shape[0])

    def edge_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(2, E) int64 tensor of [rows; cols], rows sorted (coalesced COO order)."""
        return torch.from_numpy(np.stack([self.rows, self.cols])).to(device)

    def dense(self) -> np.ndarray:
        """The (N, N) boolean adjacency (for tests and small graphs)."""
        adj = np.zeros((self.num_nodes, self.num_nodes), dtype=bool)
        adj[self.rows, self.cols] = True
        return adj


def default_cache_dir() -> Path:
    """<cache root>/graphs: $ZSTAG_CACHE, else platformdirs.user_cache_dir("zstag")."""
    return cache_root() / "graphs"


def build_graph(
    names: list[str],
    vectors: torch.Tensor,
    wup_threshold: float = 0.5,
    cosine_threshold: float = 0.5,
    wordnet: str | Path | None = None,
    cache_dir: str | Path | Literal[False] | None = None,
) -> Graph:
    """The graph over `names` (with unit-norm semantic `vectors`, one row each), cached.

    `wordnet` is a WordNet 3.0 dict folder (default: $ZSTAG_WORDNET, else /usr/share/wordnet).
    `cache_dir` is where graphs are stored on disk (default: the user cache); False disables the
    disk cache. Without WordNet every edge is a cosine edge, and `warn_missing_wordnet` says so.
    """
    folder = wordnet_dir(wordnet)
    if not has_wordnet(folder):
        warn_missing_wordnet(folder)  # before the caches: a cached cosine-only graph is still one
    key = _cache_key(names, vectors, wup_threshold, cosine_threshold, folder)
    graph = _memory_cache.get(key)
    if graph is not None:
        _memory_cache.move_to_end(key)
        return graph
    disk = None if cache_dir is False else Path(cache_dir or default_cache_dir()) / f"{key}.npz"
    graph = _read(disk) if disk is not None else None
    if graph is None:
        started = time.perf_counter()
        adj, in_wordnet = _build(names, vectors, wup_threshold, cosine_threshold, folder)
        if disk is not None:
            _write(disk, adj, in_wordnet)
        graph = _from_adjacency(adj, in_wordnet)
        # The one cost a new vocabulary adds: say what it was (later runs read the cache).
        console.info(
            f"built the label graph for {len(names)} nodes ({int(adj.sum())} edges) in "
            f"{time.perf_counter() - started:.1f}s" + (f"; cached in {disk.parent}" if disk is not None else "")
        )
    _memory_cache[key] = graph
    while len(_memory_cache) > _MEMORY_CACHE_SIZE:
        _memory_cache.popitem(last=False)
    return graph


def clear_memory_cache() -> None:
    _memory_cache.clear()


def missing_wordnet_message(folder: Path) -> str:
    return (
        f"WordNet 3.0 not found in {folder}: RGCN-PosVAE's label graph falls back to cosine similarity of "
        f"label vectors (> cosine_threshold) for every edge instead of the paper's WordNet WUP > wup_threshold; "
        f"install it with `apt-get install wordnet-base` (Debian/Ubuntu) or point {ENV_VAR} or "
        "--set wordnet=DIR at a WordNet 3.0 dict folder (see docs/methods.md)"
    )


def warn_missing_wordnet(folder: Path) -> None:
    """One warning line per process and folder that the graph is cosine-only (not per batch or vocabulary)."""
    key = str(folder)
    if key not in _warned_missing:
        _warned_missing.add(key)
        console.warn(missing_wordnet_message(folder))


def _build(
    names: list[str], vectors: torch.Tensor, wup_t: float, cos_t: float, folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The (N, N) boolean adjacency and the in-WordNet mask."""
    wn = load_wordnet(folder)
    if wn is None:  # cosine edges for every pair (build_graph has warned)
        senses: list[tuple[int, ...]] = [() for _ in names]
    else:
        senses = [wn.lookup(name) for name in names]
    in_wordnet = np.array([bool(s) for s in senses], dtype=bool)
    adj = wup_adjacency(wn, senses, wup_t) if wn is not None else np.zeros((len(names),) * 2, dtype=bool)
    add_cosine_edges(adj, vectors, ~in_wordnet, cos_t)
    np.fill_diagonal(adj, True)  # self-connections (Sec. 3.2)
    return adj, in_wordnet


def _from_adjacency(adj: np.ndarray, in_wordnet: np.ndarray) -> Graph:
    rows, cols = np.nonzero(adj)  # row-major: already in coalesced COO order
    return Graph(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), adj.shape[0], in_wordnet)


def wup_adjacency(wn: WordNet, senses: list[tuple[int, ...]], threshold: float) -> np.ndarray:
    """(N, N) bool: WUP(u, v) > threshold, maximised over senses, for nodes with senses."""
    n = len(senses)
    adj = np.zeros((n, n), dtype=bool)
    # One entry per (ancestor a, node u, sense i of u below a), valued depth(i).
    anc_parts, node_parts, depth_parts = [], [], []
    for u, node_senses in enumerate(senses):
        for s in node_senses:
            ancestors = wn.ancestors(s)
            anc_parts.append(ancestors)
            node_parts.append(np.full(ancestors.shape, u, dtype=np.int64))
            depth_parts.append(np.full(ancestors.shape, wn.depths[s], dtype=np.int64))
    if not anc_parts:
        return adj
    anc, node, m = np.concatenate(anc_parts), np.concatenate(node_parts), np.concatenate(depth_parts)
    # m_u(a): the shallowest sense of u below a. Sort by (a, m, u) and keep each (a, u)'s first.
    order = np.lexsort((node, m, anc))
    anc, node, m = anc[order], node[order], m[order]
    pair = anc * n + node
    _, first = np.unique(pair, return_index=True)
    first.sort()  # np.unique returns indices ordered by `pair`; restore the (a, m) order
    anc, node, m = anc[first], node[first], m[first]

    # s_max[d]: the largest depth sum s with 2 d / s > t, using the same float test as WordNet.wup.
    max_depth = int(wn.depths.max())
    s_max = np.zeros(max_depth + 1, dtype=np.int64)
    for d in range(1, max_depth + 1):
        s_max[d] = max((s for s in range(2, 2 * max_depth + 1) if 2.0 * d / s > threshold), default=0)

    # Within each ancestor group entries are sorted by m, so u's partners v (m_v <= s_max - m_u)
    # are a prefix of the group. Keep only partners at or before u itself: each unordered pair
    # is then produced once, and the matrix is symmetrised at the end.
    width = 2 * max_depth + 2
    group_start = np.searchsorted(anc, anc, side="left")
    keys = anc * width + m
    limit = anc * width + np.clip(s_max[wn.depths[anc]] - m, -1, None)
    hi = np.minimum(np.searchsorted(keys, limit, side="right"), np.arange(len(anc)) + 1)
    counts = np.clip(hi - group_start, 0, None)

    flat = adj.reshape(-1)
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = int(np.searchsorted(ends, ends[start] - counts[start] + _PAIRS_PER_CHUNK, side="right"))
        stop = max(stop, start + 1)
        c = counts[start:stop]
        total = int(c.sum())
        if total:
            p = np.repeat(np.arange(start, stop), c)
            offset = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            q = group_start[p] + offset
            flat[node[p] * n + node[q]] = True
        start = stop
    _symmetrise(adj)
    return adj


def _symmetrise(adj: np.ndarray, block: int = 1024) -> None:
    """adj |= adj.T in place, block by block (a plain transpose walks memory column-wise: 3x slower)."""
    n = adj.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            both = adj[i : i + block, j : j + block] | adj[j : j + block, i : i + block].T
            adj[i : i + block, j : j + block] = both
            adj[j : j + block, i : i + block] = both.T


def add_cosine_edges(adj: np.ndarray, vectors: torch.Tensor, fallback: np.ndarray, threshold: float) -> None:
    """Join each `fallback` node to every node whose cosine similarity exceeds `threshold`."""
    idx = np.flatnonzero(fallback)
    if idx.size == 0:
        return
    v = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=1)
    for chunk in np.array_split(idx, max(1, idx.size // 1024)):
        close = (v[torch.from_numpy(chunk)] @ v.T > threshold).numpy()
        adj[chunk] |= close
        adj[:, chunk] |= close.T


def _cache_key(names: list[str], vectors: torch.Tensor, wup_t: float, cos_t: float, folder: Path) -> str:
    """Hash of everything the graph depends on (labels, thresholds, WordNet path and files, vectors).

    The WordNet files' sizes and modification times are part of it, so installing WordNet after a
    cosine-only graph was cached (or replacing the database) builds the graph again.
    """
    h = hashlib.sha256()
    h.update("\x1f".join(names).encode("utf-8"))
    h.update(f"\x1e{float(wup_t)!r}\x1e{float(cos_t)!r}\x1e{folder.resolve()}\x1e".encode())
    for name in REQUIRED_FILES:
        try:
            st = os.stat(folder / name)
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\x1e".encode())
        except OSError:
            h.update(f"{name}:absent\x1e".encode())
    h.update(np.ascontiguousarray(vectors.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()[:32]


def _read(path: Path) -> Graph | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            n = int(data["num_nodes"])
            adj = np.unpackbits(data["adjacency"], count=n * n).reshape(n, n).view(bool)
            in_wordnet = data["in_wordnet"].astype(bool)
    except (OSError, KeyError, ValueError):
        return None  # absent or unreadable: rebuild
    return _from_adjacency(adj, in_wordnet)


def _write(path: Path, adj: np.ndarray, in_wordnet: np.ndarray) -> None:
    """Save atomically (write a temporary file, then rename) so concurrent runs never see half a file."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, num_nodes=np.int64(adj.shape[0]), adjacency=np.packbits(adj), in_wordnet=in_wordnet)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as exc:  # a read-only cache is not fatal: the graph is simply rebuilt next time
        warnings.warn(f"could not cache the label graph in {path.parent}: {exc}", RuntimeWarning, stacklevel=3)
