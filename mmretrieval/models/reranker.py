"""The cross-attention re-ranker: the words of a query attend over the regions of an item and score the pair jointly.

Inputs (all frozen features, so the model itself is small and a query costs only its own layers):

* **text token states** of the dual encoder's text tower (MiniLM: (L, 384) per caption, L <= 64 word pieces, with
  a padding mask), not only its pooled sentence vector;
* **region features** of the item: the spatial feature map of the pretrained image backbone (EfficientNet-Lite0:
  (1280, 7, 7) at 224 px, flattened to R = 49 cells), passed once through :meth:`CrossReranker.project_regions`
  into ``region_dim`` (128) channels. That projection runs at embed time and its fp16 output is what the region
  store keeps (:mod:`mmretrieval.regions`), so a query never re-decodes media nor re-runs the backbone;
* the dual encoder's cosine of the pair, which the final score adds with a learned weight (``dual_weight``): the
  re-ranker learns a correction of the first stage's ranking rather than a ranking from nothing, which matters when
  a few hundred photos are all there is to learn from.

Each of ``layers`` blocks is pre-norm cross-attention (tokens -> regions, ``heads`` heads, key padding mask on the
regions) then a feed-forward block; the token states are mean-pooled over non-padding tokens and a linear layer
gives the match logit. Saved as ``config.json`` + ``weights.safetensors`` like the dual encoder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmretrieval.errors import ModelError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RerankerConfig:
    text_dim: int = 384  # width of the text tower's token states
    backbone_dim: int = 1280  # channels of the image backbone's feature map
    regions: int = 49  # cells of the feature map (7 x 7 at 224 px)
    region_dim: int = 128  # stored region width (after project_regions) and the attention width
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    use_dual_score: bool = True  # add dual_weight * (dual encoder cosine) to the cross-attention logit
    basis_dim: int = 128  # region features are first reduced to their top principal components (fitted once on
    # the training maps, :meth:`CrossReranker.fit_basis`; a fixed buffer), 0: the learned projection sees all channels
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RerankerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - known:
            raise ModelError(f"re-ranker config has unknown keys {sorted(set(raw) - known)}: made by a newer "
                             "mmretrieval?")
        return cls(**raw)


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries: tokens, keys/values: regions) + feed-forward, both residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor, regions: torch.Tensor, region_pad: torch.Tensor | None) -> torch.Tensor:
        """(P, L, d) tokens, (P, R, d) regions, (P, R) bool padding (True = ignore) -> (P, L, d)."""
        kv = self.norm_kv(regions)
        attended, _ = self.attn(self.norm_q(tokens), kv, kv, key_padding_mask=region_pad, need_weights=False)
        tokens = tokens + attended
        return tokens + self.ff(self.norm_ff(tokens))


class CrossReranker(nn.Module):
    """Scores (query, item) pairs: text token states attend over projected region features."""

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        if config.region_dim % config.heads:
            raise ModelError(f"re-ranker region_dim {config.region_dim} is not divisible by heads {config.heads}")
        self.config = config
        d = config.region_dim
        width = min(config.basis_dim, config.backbone_dim) if config.basis_dim else config.backbone_dim
        self.register_buffer("region_mean", torch.zeros(config.backbone_dim))
        self.register_buffer("region_basis", torch.eye(config.backbone_dim)[:, :width].contiguous())
        self.region_proj = nn.Linear(width, d)  # run at embed time; its output is stored in fp16
        self.region_pos = nn.Parameter(torch.zeros(config.regions, d))  # where each cell sits in the image
        self.text_proj = nn.Linear(config.text_dim, d)
        self.blocks = nn.ModuleList(CrossBlock(d, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        self.dual_weight = nn.Parameter(torch.tensor(10.0 if config.use_dual_score else 0.0),
                                        requires_grad=config.use_dual_score)

    def project_regions(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, backbone_dim, H, W) backbone feature maps (H * W = ``regions``) -> (B, H * W, region_dim), the
        form the region store keeps (cast to fp16 there). Raises :class:`ModelError` for another grid size."""
        if feature_map.dim() != 4 or feature_map.shape[1] != self.config.backbone_dim:
            raise ModelError(f"feature map of shape {tuple(feature_map.shape)}: expected (B, "
                             f"{self.config.backbone_dim}, H, W)")
        if feature_map.shape[2] * feature_map.shape[3] != self.config.regions:
            raise ModelError(f"feature map grid {tuple(feature_map.shape[2:])} has "
                             f"{feature_map.shape[2] * feature_map.shape[3]} cells; the re-ranker was trained on "
                             f"{self.config.regions}")
        return self.region_proj(self.reduce(feature_map))

    def reduce(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, backbone_dim, H, W) -> (B, H * W, basis_dim) cells on the fixed principal-component basis (no
        parameters: training computes it once per image)."""
        cells = feature_map.float().flatten(2).transpose(1, 2)  # (B, R, backbone_dim)
        return (cells - self.region_mean) @ self.region_basis

    @torch.no_grad()
    def fit_basis(self, feature_maps: torch.Tensor, max_cells: int = 20_000, seed: int = 0) -> None:
        """Fit the region basis: mean and top ``basis_dim`` principal directions of the cells of (N,
        backbone_dim, H, W) training feature maps (a seeded sample of at most ``max_cells`` cells)."""
        if not self.config.basis_dim:
            return
        cells = feature_maps.float().flatten(2).transpose(1, 2).reshape(-1, self.config.backbone_dim)
        g = torch.Generator().manual_seed(seed)
        cells = cells[torch.randperm(len(cells), generator=g)[:max_cells]]
        mean = cells.mean(0)
        _, _, v = torch.linalg.svd(cells - mean, full_matrices=False)
        self.region_mean.copy_(mean)
        self.region_basis.copy_(v[: self.region_basis.shape[1]].T)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor,
                dual: torch.Tensor | None = None, region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Match logits of P pairs.

        Args:
            tokens: (P, L, text_dim) text token states; rows may repeat one query (expand, no copy).
            token_mask: (P, L) bool, True for real tokens (False: padding, ignored by the pooling).
            regions: (P, R, region_dim) projected regions (fp16 from the store is cast to float here).
            dual: (P,) dual-encoder cosines of the pairs, or None (then that term is left out).
            region_mask: (P, R) bool, True for real regions, or None (all real).

        Returns:
            (P,) float logits; higher = better match. Only their order per query matters.
        """
        if tokens.shape[:2] != token_mask.shape or tokens.shape[0] != regions.shape[0]:
            raise ModelError(f"tokens {tuple(tokens.shape)}, token mask {tuple(token_mask.shape)} and regions "
                             f"{tuple(regions.shape)} disagree on pairs or length")
        used = token_mask.any(dim=0)  # positions that are padding in every pair cost nothing
        tokens, token_mask = tokens[:, used], token_mask[:, used]
        regions = regions.float() + self.region_pos[: regions.shape[1]]
        pad = None if region_mask is None else ~region_mask
        x = self.text_proj(tokens.float())
        for block in self.blocks:
            x = block(x, regions, pad)
        x = self.norm(x)
        keep = token_mask.unsqueeze(-1).to(x.dtype)  # (P, L, 1)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (P, d)
        logit = self.head(pooled).squeeze(-1)
        if dual is not None and self.config.use_dual_score:
            logit = logit + self.dual_weight * dual.float()
        return logit

    def score_candidates(self, tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor,
                         dual: torch.Tensor | None = None) -> torch.Tensor:
        """One query against N candidates: (L, text_dim) tokens, (L,) mask, (N, R, region_dim) regions, (N,) dual
        cosines -> (N,) logits."""
        n = regions.shape[0]
        return self.forward(tokens.unsqueeze(0).expand(n, -1, -1), token_mask.unsqueeze(0).expand(n, -1), regions,
                            dual)


def save(net: CrossReranker, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """``config.json`` (the :class:`RerankerConfig` plus ``extra``, e.g. the dual-encoder version it re-ranks
    for, under ``"meta"``) and ``weights.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    raw = {"config": dataclasses.asdict(net.config), "meta": extra or {}}
    (folder / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
              str(folder / "weights.safetensors"))


def load(folder: Path) -> tuple[CrossReranker, dict[str, Any]]:
    """A saved re-ranker (eval mode) and its ``meta``; never unpickles. Raises :class:`ModelError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg, weights = folder / "config.json", folder / "weights.safetensors"
    if not cfg.is_file() or not weights.is_file():
        raise ModelError(f"{folder} is not a saved re-ranker (needs config.json and weights.safetensors)")
    raw = json.loads(cfg.read_text(encoding="utf-8"))
    net = CrossReranker(RerankerConfig.from_json(raw["config"]))
    try:
        net.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError) as e:
        raise ModelError(f"{weights} is not a re-ranker matching {cfg}: {str(e).splitlines()[0]}") from e
    return net.eval(), dict(raw.get("meta", {}))


@torch.no_grad()
def token_states(model: Any, texts: list[str], batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) texts -> ((N, L, dim) float32 token states, (N, L) bool mask of real tokens) from a
    sentence-transformers ``model`` (the text tower's), L the longest tokenised text of the call (CPU tensors)."""
    from sentence_transformers.util import batch_to_device

    states, masks = [], []
    for start in range(0, len(texts), batch_size):
        features = batch_to_device(_tokenize(model, texts[start:start + batch_size]), model.device)
        out = model(features)
        states.append(out["token_embeddings"].float().cpu())
        masks.append(out["attention_mask"].bool().cpu())
    if not states:
        return torch.zeros(0, 1, 1), torch.zeros(0, 1, dtype=torch.bool)
    length = max(s.shape[1] for s in states)
    pad = [nn.functional.pad(s, (0, 0, 0, length - s.shape[1])) for s in states]
    pad_m = [nn.functional.pad(m, (0, length - m.shape[1])) for m in masks]
    return torch.cat(pad), torch.cat(pad_m)


@torch.no_grad()
def encode_with_tokens(model: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass of a sentence-transformers ``model`` for a query: ((N, dim) sentence embeddings, (N, L, dim)
    token states, (N, L) bool mask), CPU float32. The dual encoder needs the first, the re-ranker the others."""
    from sentence_transformers.util import batch_to_device

    out = model(batch_to_device(_tokenize(model, texts), model.device))
    return (out["sentence_embedding"].float().cpu(), out["token_embeddings"].float().cpu(),
            out["attention_mask"].bool().cpu())


def _tokenize(model: Any, texts: list[str]) -> dict[str, Any]:
    """The model's tokenizer output (``preprocess`` in sentence-transformers >= 5, ``tokenize`` before)."""
    return dict((getattr(model, "preprocess", None) or model.tokenize)(texts))
