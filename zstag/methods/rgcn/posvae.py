"""RGCN-PosVAE: multi-label zero-shot tagging through a class graph extended with the classes of the
backbone's pretraining classifier (Huang et al., "Multi-label Zero-shot Classification by Learning
to Transfer from External Knowledge", BMVC 2020, Sec. 3).

The graph (`zstag.methods.rgcn.graph`) has one node per target label (the seen labels in training,
the user's vocabulary when tagging) and one per external class (ImageNet-1k for VGG19/ResNet, the
bundled backbone's own classes), minus external classes named like a target label; edges join
classes whose WordNet WUP similarity exceeds 0.5, self-loops included (Sec. 3.2, 4.1). In training
the unseen labels are targets too (`on_unseen_labels`), so external classes named like them are
removed from the training graph as well, as the paper removes overlaps with all target labels.
Node states:

- target label y: an MLP over [pooled image feature, s_y]                              (Sec. 3.2)
- external class y: the PosVAE, a conditional VAE over (p^a_y, s_y) where p^a is the pretraining
  classifier's softmax: (mu, log sigma^2) = Encoder(proj(p^a_y), s_y); h_y = mu + exp(log sigma^2 / 2) z
  in training, h_y = mu when tagging; the Decoder reconstructs p^a_y from [h_y, s_y]    (eq. 1-5)

The RGCN learns a weight for every edge from the two classes' semantic vectors,
w_uv = sigmoid(MLP[s_u, s_v]) with w_uu = 1 (eq. 7), normalises W_hat * A as Kipf & Welling do,
A_hat = D^-1/2 (W_hat * A) D^-1/2, and runs H^{l+1} = ReLU(A_hat H^l W^l) twice (eq. 6). A last MLP
gives each target node a logit; training minimises the class-wise BCE over seen labels (eq. 8)
plus lambda times the PosVAE loss (eq. 9). `score` returns the logits (sigmoid gives the paper's
probabilities).

Variants (the `variant` setting, Sec. 4.1 "Baselines"):
- `rgcn-posvae` (default): the full model above.
- `rgcn-xl`: external nodes included but initialised like target nodes (MLP over [feature, s_y]);
  their outputs are trained with MSE to reproduce p^a (weighted by lambda); no PosVAE.
- `rgcn`: no external nodes and no PosVAE; works with a backbone that has no classifier.
On a CLIP backbone the "classifier" is CLIP's zero-shot one over the ImageNet-1k names
(`zstag.backbones.clip`), so its external nodes are the same 1,000 classes as on the CNNs.

Deviations from the paper, and why:
- Labels missing from WordNet (after trying the underscored phrase, its base form and its head
  noun) are linked by cosine similarity of semantic vectors > `cosine_threshold`; without any
  WordNet installed, every edge is a cosine edge (a warning says so). A user's vocabulary is free
  text, so a WordNet-only graph would leave such labels isolated.
- Eq. 5 names the encoder output "log sigma" but uses exp(log sigma / 2) as the standard
  deviation, i.e. it is a log-variance; we call it `logvar` and use the matching Gaussian KL.
- The decoder ends in a sigmoid, so reconstructions are probabilities like p^a; its Gaussian
  log-likelihood becomes the MSE the paper names. The KL is averaged over the d_h latent
  dimensions (a beta-VAE with beta = 1/d_h; the paper sums, eq. 4) and, like the MSE, over
  external classes (eq. 1's 1/|Y^a|) and images. Why: summed over d_h = 256 dimensions the KL
  (about 8.8 nats at initialisation) outweighs an MSE on one probability per node, the posterior
  collapses to the prior and the external nodes carry nothing. Measured on the synthetic set whose
  labels are decided only by the classifier's probabilities (image features pure noise; 12
  external classes, 12 labels, default widths, 300 Adam steps at 2e-3, batch 64; held-out mAP):
  no external nodes (`rgcn`) 0.209; summed KL 0.209 (KL fell to 0.0002 nats: collapsed); summed KL
  annealed from 0 to 1 over 200 steps 0.210 (collapses once the weight reaches 1); free bits
  (0.1 nats per dimension) 0.865; KL averaged over dimensions 0.878. The average wins and adds no
  setting (free bits needs its threshold). The logged `vae_kl` is this per-dimension average.
  On the OpenClipart benchmark, whose bundled classifier gives a nearly flat p^a, the posterior
  collapses all the same (vae_kl ~1e-8 by epoch 8; free bits and sigmoid p^a measured, neither
  helped: docs/methods.md).
- p^a is the softmax over all the classifier's classes, then restricted to the kept external
  classes (the authors' code renormalises over the kept classes; the softmax over all of them is a
  property of the image alone, so `encode` can compute it without knowing the vocabulary). It is
  detached: it is the observed variable the PosVAE explains, and letting the reconstruction loss
  move a fine-tuned classifier would let it make p^a trivially easy to reconstruct.
- w_uv is not symmetric (MLP(s_u, s_v) != MLP(s_v, s_u)); D holds the row sums of W_hat * A, which
  is exactly Kipf's normalisation whenever the weights happen to be symmetric.
- The image feature is the global average pool of the backbone's last stage (ResNet-101's pooled
  2048-d feature in the paper). The MLP widths the paper leaves open (target-node MLP, output
  MLP) use the same hidden width 256 as its PosVAE and relation network.
- Initialisation (the paper gives none): the relation network's output bias starts at
  logit(`edge_init` = 0.01), so every edge weight starts near 0.01 and A_hat near the identity.
  WUP > 0.5 graphs are dense (about 10% of all pairs for a random noun vocabulary; nearly complete
  among phrases sharing a head noun), and with w_uv near sigmoid(0) = 0.5 two propagation steps
  average every node with dozens of neighbours, so all labels start with the same state and
  training stalls at the label prior (measured on the synthetic set: mAP 0.20 after 120 steps on
  pretrained features at w = 0.5, 0.38 after 60 steps at w = 0.01). The network opens the edges
  that help. `edge_init=0.5` restores the plain sigmoid start.
- The semantic vectors zstag provides are unit-norm, while the paper feeds raw GloVe vectors
  (norm about 5-8). The networks receive s_y scaled by `semantic_scale` (default sqrt(D), i.e.
  entries of unit size), so the label's part of each first layer is not drowned by the image
  feature's. The graph's cosine edges use the unit vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Method
from zstag.methods.rgcn.graph import Graph, build_graph
from zstag.methods.settings import WIDTH_LIMIT, Hyperparameters, MethodConfig, Recipe, setting

VARIANTS = ("rgcn-posvae", "rgcn-xl", "rgcn")
_EDGE_CHUNK = 1 << 18  # edges whose relation-network hidden layer is materialised at once


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """The two-layer perceptron the paper uses everywhere (one hidden ReLU layer)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, diag exp(logvar)) || N(0, I)] summed over the last dimension (eq. 4's second term)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def normalise_adjacency(edges: torch.Tensor, weights: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Values of A_hat = D^-1/2 (W_hat * A) D^-1/2 on the edge list (Kipf & Welling; Sec. 3.4).

    `edges` is (2, E) [rows; cols] of the binary A (self-loops included), `weights` (E,) holds
    W_hat on those edges; D is the diagonal of the row sums of W_hat * A.
    """
    rows, cols = edges
    degree = torch.zeros(num_nodes, dtype=weights.dtype, device=weights.device).index_add_(0, rows, weights)
    scale = degree.clamp_min(1e-12).rsqrt()
    return scale[rows] * weights * scale[cols]


def propagate(edges: torch.Tensor, values: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """A_hat H for every image at once: states (B, N, d) -> (B, N, d), one sparse product.

    Runs in float32 outside autocast (sparse kernels have no bf16 path on every device).
    """
    b, n, d = states.shape
    with torch.autocast(states.device.type, enabled=False):
        matrix = torch.sparse_coo_tensor(edges, values.float(), (n, n), is_coalesced=True, check_invariants=False)
        flat = states.float().permute(1, 0, 2).reshape(n, b * d)
        return torch.sparse.mm(matrix, flat).reshape(n, b, d).permute(1, 0, 2)


class RelationNet(nn.Module):
    """Eq. 7: w_uv = sigmoid(MLP([s_u, s_v])) in [0, 1] on every edge, w_uu = 1.

    The first layer acts on the concatenation [s_u, s_v]; it is applied as W_u s_u + W_v s_v, the
    two halves computed once per node, so no (E, 2D) tensor is built for a graph of 10^7 edges.
    """

    def __init__(self, sem_dim: int, hidden: int, initial_weight: float = 0.5) -> None:
        super().__init__()
        self.sem_dim = sem_dim
        self.first = nn.Linear(2 * sem_dim, hidden)
        self.second = nn.Linear(hidden, 1)
        with torch.no_grad():  # w_uv starts near `initial_weight` (sigmoid of the output bias)
            self.second.bias.fill_(math.log(initial_weight / (1.0 - initial_weight)))

    def forward(self, vectors: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        w_u, w_v = self.first.weight.split(self.sem_dim, dim=1)
        from_u = vectors @ w_u.T + self.first.bias
        from_v = vectors @ w_v.T
        rows, cols = edges
        parts = []
        for start in range(0, rows.shape[0], _EDGE_CHUNK):
            r, c = rows[start : start + _EDGE_CHUNK], cols[start : start + _EDGE_CHUNK]
            w = torch.sigmoid(self.second(F.relu(from_u[r] + from_v[c])).squeeze(-1))
            parts.append(torch.where(r == c, torch.ones_like(w), w))  # diagonal of W_hat = 1
        return torch.cat(parts) if parts else from_u.new_zeros(0)


class TargetNodes(nn.Module):
    """Initial states of target nodes: MLP([image feature, s_y]) (Sec. 3.2).

    The first layer on the concatenation is applied as W_f f + W_s s_y, so the (B, L, C + D)
    input is never built.
    """

    def __init__(self, feature_dim: int, sem_dim: int, hidden: int, node_dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(feature_dim, hidden)
        self.label = nn.Linear(sem_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, node_dim)

    def forward(self, features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """features (B, C), vectors (L, D) -> (B, L, node_dim)."""
        hidden = F.relu(self.image(features).unsqueeze(1) + self.label(vectors).unsqueeze(0))
        return self.out(hidden)


class PosVAE(nn.Module):
    """Node states of external classes from their classifier probabilities (Sec. 3.3, eq. 1-5)."""

    def __init__(self, sem_dim: int, hidden: int, node_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(1, sem_dim)  # "projects p^a_y into the same dimension space as s_y"
        self.encoder = mlp(2 * sem_dim, hidden, 2 * node_dim)  # -> (mu, log sigma^2)
        self.decoder = mlp(node_dim + sem_dim, hidden, 1)  # [h_y, s_y] -> p^a_y

    def forward(self, probs: torch.Tensor, vectors: torch.Tensor, sample: bool) -> tuple[torch.Tensor, ...]:
        """probs (B, K), vectors (K, D) -> states h (B, K, d_h), reconstruction (B, K), mu, logvar."""
        b, k = probs.shape
        s = vectors.unsqueeze(0).expand(b, k, -1)
        mu, logvar = self.encoder(torch.cat([self.project(probs.unsqueeze(-1)), s], dim=-1)).chunk(2, dim=-1)
        states = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu  # eq. 5
        recon = torch.sigmoid(self.decoder(torch.cat([states, s], dim=-1)).squeeze(-1))
        return states, recon, mu, logvar


@dataclass
class GraphBatch:
    """Everything about the graph of one label set, shared by all images scored against it."""

    vectors: torch.Tensor  # (L, D) target label inputs s_y (scaled semantic vectors)
    external: torch.Tensor  # (K,) indices of the kept external classes
    external_vectors: torch.Tensor  # (K, D) their inputs s_y
    edges: torch.Tensor  # (2, E) int64
    values: torch.Tensor  # (E,) A_hat on the edges
    num_nodes: int  # L + K


@dataclass(frozen=True)
class RGCNPosVAEConfig(MethodConfig):
    """The variant, the networks' widths and the graph's thresholds (Sec. 4.1)."""

    variant: str = setting("rgcn-posvae", choices=VARIANTS)
    hidden: int = setting(256, 1, WIDTH_LIMIT)  # PosVAE encoder/decoder, relation network and node MLPs
    node_dim: int = setting(256, 1, WIDTH_LIMIT)  # d_h: node states and the width of both RGCN layers
    gcn_layers: int = setting(2, 0, 64)
    vae_weight: float = setting(1.0, 0)  # lambda of eq. 9
    edge_init: float = setting(0.01, above=0, high=0.999)  # w_uv off the diagonal at initialisation (ours; see above)
    semantic_scale: float = setting(0.0, 0)  # s_y = scale * unit vector as network input; 0 = sqrt(D) (ours)
    # Graph (Sec. 4.1): WUP > 0.5 on WordNet; cosine edges for labels WordNet lacks (ours).
    wup_threshold: float = setting(0.5, 0, 1)
    cosine_threshold: float = setting(0.5, -1, 1)
    wordnet: str = setting("")  # a WordNet 3.0 dict folder; "" = /usr/share/wordnet
    graph_cache: bool = setting(True)  # keep built graphs under <cache>/graphs
    # Images x nodes x width elements per slice when scoring a large vocabulary.
    score_budget: int = setting(1 << 26, 1)


class RGCNPosVAE(Method[dict[str, torch.Tensor]]):
    """Relational GCN over target and external classes (`--method rgcn-posvae`)."""

    name: ClassVar[str] = "rgcn-posvae"
    chunkable: ClassVar[bool] = False  # the graph spans the whole vocabulary
    # Recipe (Sec. 4.1): Adam at 5e-4, lr x 0.1 when the (training) loss plateaus. The paper gives
    # no patience, batch size or epochs: a plateau is 3 epochs without a lower loss (lr_patience 2,
    # ours), the recipe defaults give the rest.
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="adam", lr=5e-4, schedule="plateau", lr_factor=0.1, plateau_metric="loss", lr_patience=2
    )
    Config: ClassVar[type[RGCNPosVAEConfig]] = RGCNPosVAEConfig
    external_vectors: torch.Tensor  # buffer (K, D), declared so attribute access is typed as a tensor

    def __init__(
        self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[RGCNPosVAEConfig], embed: Embedder
    ) -> None:
        super().__init__(backbone, seen, hp, embed)
        config = hp.config
        self.variant = config.variant
        self.external_names: list[str] = []
        self.unseen_names: list[str] = []  # target labels held out of training (`on_unseen_labels`)
        external = torch.zeros(0, seen.dim)
        if self.variant != "rgcn":
            if backbone.classifier is None or not backbone.class_names:
                raise UsageError(
                    f"variant {self.variant} uses the classes of the backbone's pretraining classifier as "
                    f"external knowledge, and backbone {backbone.name!r} has none: set variant=rgcn "
                    "(the variant without external nodes) or a backbone with a classifier "
                    "(bundled, vgg19, resnet101, clip-vit-b32)"
                )
            self.external_names = list(backbone.class_names)
            external = embed(self.external_names).vectors.float()
        self.register_buffer("external_vectors", external.clone())
        self.wup_threshold = config.wup_threshold
        self.cosine_threshold = config.cosine_threshold
        self.wordnet = config.wordnet or None
        self.graph_cache = config.graph_cache
        self.vae_weight = config.vae_weight
        self.score_budget = config.score_budget
        self._edges: tuple[Graph, torch.Tensor] | None = None
        self._values: tuple[Graph, tuple[int, ...], torch.Tensor] | None = None
        self.semantic_scale = config.semantic_scale or math.sqrt(seen.dim)
        hidden, node_dim = config.hidden, config.node_dim
        self.width = max(hidden, node_dim, 2 * seen.dim)

        self.target_nodes = TargetNodes(backbone.channels[-1], seen.dim, hidden, node_dim)
        self.posvae = PosVAE(seen.dim, hidden, node_dim) if self.variant == "rgcn-posvae" else None
        self.relation = RelationNet(seen.dim, hidden, config.edge_init)
        self.gcn = nn.ModuleList(nn.Linear(node_dim, node_dim) for _ in range(config.gcn_layers))
        self.classify = mlp(node_dim, hidden, 1)

    # -- the graph --------------------------------------------------------------------------

    def on_unseen_labels(self, names: list[str]) -> None:
        """The zero-shot run's unseen labels, known while training on the seen ones: external classes
        named like them are left out of the training graph too, as the paper removes the overlaps
        with all target labels (Sec. 3.1), so no unseen class enters training as an external node."""
        self.unseen_names = list(names)

    def kept_external(self, names: list[str]) -> list[int]:
        """External classes that coincide with no target label, neither one of `names` nor an unseen
        label (case-insensitive; any of a comma-separated synonym list counts), as the paper removes
        overlapping ImageNet classes."""
        targets = {n.strip().lower() for n in [*names, *self.unseen_names]}
        return [
            k
            for k, name in enumerate(self.external_names)
            if not any(alt.strip().lower() in targets for alt in name.split(","))
        ]

    def graph(self, labels: LabelSet) -> GraphBatch:
        """Build (or fetch from the cache) the graph over `labels` + kept external classes, and A_hat."""
        device = self.external_vectors.device
        vectors = labels.vectors.to(device=device, dtype=torch.float32)
        kept = self.kept_external(labels.names)
        external = torch.tensor(kept, dtype=torch.long, device=device)
        names = list(labels.names) + [self.external_names[k] for k in kept]
        all_vectors = torch.cat([vectors, self.external_vectors[external]])
        graph = build_graph(
            names,
            all_vectors,
            self.wup_threshold,
            self.cosine_threshold,
            self.wordnet,
            cache_dir=None if self.graph_cache else False,
        )
        if self._edges is None or self._edges[0] is not graph or self._edges[1].device != device:
            with torch.inference_mode(False):  # a normal tensor, so training may reuse it after validation
                self._edges = (graph, graph.edge_index(device))  # reused while the vocabulary is unchanged
        edges = self._edges[1]
        s = all_vectors * self.semantic_scale  # network inputs s_y (see the module docstring)
        values = self.edge_values(graph, s, edges)
        return GraphBatch(s[: len(labels)], external, s[len(labels) :], edges, values, graph.num_nodes)

    def edge_values(self, graph: Graph, s: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """A_hat on the edges. Without autograd (tagging, validation) the result is kept for the next
        batch while the graph and the relation network's parameters are unchanged: for a 10,000-label
        vocabulary eq. 7 runs over ~10^7 edges, more work than propagating a batch."""
        versions = tuple(p._version for p in self.relation.parameters())  # bumped by every in-place update
        cached = self._values
        if (
            not torch.is_grad_enabled()
            and cached is not None
            and cached[0] is graph
            and cached[1] == versions
            and cached[2].device == edges.device
        ):
            return cached[2]
        with torch.autocast(edges.device.type, enabled=False):
            weights = self.relation(s, edges)  # eq. 7
            values = normalise_adjacency(edges, weights, graph.num_nodes)
        self._values = None if torch.is_grad_enabled() else (graph, versions, values)
        return values

    # -- the model --------------------------------------------------------------------------

    def prepare(self, device: torch.device) -> None:
        if self.variant != "rgcn":
            self.backbone.prepare_classifier(device)

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled image feature and, for the variants with external nodes, the classifier's p^a."""
        stages = self.backbone.stages(images)
        code = {"feature": stages[-1].mean(dim=(2, 3))}
        if self.variant != "rgcn":
            code["probs"] = torch.softmax(self.backbone.class_logits(stages).float(), dim=1).detach()
        return code

    def forward_graph(self, code: dict[str, torch.Tensor], g: GraphBatch, sample: bool) -> dict[str, torch.Tensor]:
        """Node states -> two RGCN layers -> per-node logits (B, L + K), plus what the losses need."""
        features = code["feature"]
        out: dict[str, torch.Tensor] = {}
        states = [self.target_nodes(features, g.vectors.to(features.dtype))]
        if self.variant != "rgcn":
            probs = code["probs"][:, g.external]
            out["probs"] = probs
            if self.posvae is not None:
                h, out["recon"], out["mu"], out["logvar"] = self.posvae(probs, g.external_vectors, sample)
            else:  # rgcn-xl: external nodes initialised like target nodes
                h = self.target_nodes(features, g.external_vectors.to(features.dtype))
            states.append(h.to(states[0].dtype))
        h = torch.cat(states, dim=1)
        for layer in self.gcn:
            h = F.relu(layer(propagate(g.edges, g.values, h)))  # eq. 6
        out["logits"] = self.classify(h).squeeze(-1)
        return out

    def score(self, code: dict[str, torch.Tensor], labels: LabelSet) -> torch.Tensor:
        """Logits (B, L) of `labels`; the batch is sliced so a slice holds ~score_budget activations."""
        g = self.graph(labels)
        batch = code["feature"].shape[0]
        step = max(1, self.score_budget // (g.num_nodes * self.width))
        parts = []
        for start in range(0, batch, step):
            piece = {k: v[start : start + step] for k, v in code.items()}
            parts.append(self.forward_graph(piece, g, sample=False)["logits"][:, : len(labels)])
        return torch.cat(parts)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 9: L_RGCN (eq. 8) + lambda L_VAE (eq. 4), or + lambda MSE(p^a) for rgcn-xl."""
        g = self.graph(seen)
        out = self.forward_graph(self.encode(images), g, sample=self.training)
        logits = out["logits"].float()
        num_seen = len(seen)
        bce = F.binary_cross_entropy_with_logits(logits[:, :num_seen], targets.float())  # eq. 8
        parts = {"bce": float(bce.detach())}
        total = bce
        if self.posvae is not None and g.external.numel():
            mse = F.mse_loss(out["recon"].float(), out["probs"])  # -log P(p^a | h, s) up to constants
            kl = gaussian_kl(out["mu"].float(), out["logvar"].float()).mean() / out["mu"].shape[-1]  # per dimension
            total = total + self.vae_weight * (mse + kl)
            parts.update(vae_mse=float(mse.detach()), vae_kl=float(kl.detach()))
        elif self.variant == "rgcn-xl" and g.external.numel():
            mse = F.mse_loss(torch.sigmoid(logits[:, num_seen:]), out["probs"])
            total = total + self.vae_weight * mse
            parts["xl_mse"] = float(mse.detach())
        return total, parts
