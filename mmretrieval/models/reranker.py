"""The cross-attention re-ranker: the words of a query attend over the regions of an item and score the pair jointly.

Inputs (all frozen features, so the model itself is small and a query costs only its own layers):

* **text token states** of the dual encoder's text tower (MiniLM: (L, 384) per caption, L <= 64 word pieces, with
  a padding mask), not only its pooled sentence vector;
* **region features** of the item: the spatial feature map of the pretrained image backbone (EfficientNet-Lite0:
  (1280, 7, 7) at 224 px, flattened to R = 49 cells), or for audio items the audio tower's frame sequence
  ((192, 1, 4) for 1.5 s clips: :meth:`~mmretrieval.models.audio.AudioCNN.frame_map`, R = 4 frames of 320 ms),
  passed once through :meth:`CrossReranker.project_regions`
  into ``region_dim`` (128) channels. That projection runs at embed time and its fp16 output is what the region
  store keeps (:mod:`mmretrieval.backends.regions`), so a query never re-decodes media nor re-runs the backbone;
* the dual encoder's cosine of the pair, which the final score adds with a learned weight (``dual_weight``): the
  re-ranker learns a correction of the first stage's ranking rather than a ranking from nothing, which matters when
  a few hundred photos are all there is to learn from.

Each of ``layers`` blocks is pre-norm cross-attention (tokens -> regions, ``heads`` heads, key padding mask on the
regions) then a feed-forward block; the token states are mean-pooled over non-padding tokens and a linear layer
gives the match logit. Saved as ``config.json`` + ``weights.safetensors`` like the dual encoder.

**Concept regions** (``concepts`` > 0, the default of ``params.yaml``): a few hundred training photos are too few to
learn word-to-region attention from scratch (docs/benchmarks.md), so each region is instead described in the text
tower's own space by what the pretrained backbone already knows about it: the backbone's ImageNet classifier is
applied to every cell of the feature map (pooled to a ``concept_grid`` x ``concept_grid`` grid first), and the
cell's class distribution weights the text tower's embeddings of the class names ("a photo of a golden
retriever", ...), giving one unit vector per region in the sentence space. The query's token states then attend
over those regions with hard attention (each word takes its best-matching region, the words' matches averaged:
late interaction as in ColBERT), and the sentence vector is compared with the whole image's concept vector; both
scores enter the logit with learned weights. The stored regions are the concept vectors ((grid^2, text_dim) fp16),
so a query still needs no backbone. Without learned blocks (``layers: 0``) the model has three parameters (the
weights of the dual, whole-image and region scores), which a few hundred photos can fit without overfitting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmretrieval.core.errors import ModelError

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
    concepts: int = 0  # classes of the backbone's classifier describing each region (ImageNet: 1000); 0: raw features
    concept_grid: int = 3  # concept regions: the feature map average-pooled to this many cells per side
    modality: str = "image"  # the items it re-ranks: "image" (backbone cells) or "audio" (audio-tower frames)
    references: int = 0  # regions of this many training items kept for caption centring (see caption_offsets)
    format_version: int = FORMAT_VERSION

    @property
    def stored_regions(self) -> int:
        """Regions per item in the store: the feature map's cells, or the concept grid's."""
        return self.concept_grid ** 2 if self.concepts else self.regions

    @property
    def stored_dim(self) -> int:
        """Width of each stored region: ``region_dim``, or the text tower's width for concept regions."""
        return self.text_dim if self.concepts else self.region_dim

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
    """Scores (query, item) pairs: text token states attend over the item's regions (projected backbone features,
    or concept regions in the text tower's space; see the module docstring)."""

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        if config.layers and config.region_dim % config.heads:
            raise ModelError(f"re-ranker region_dim {config.region_dim} is not divisible by heads {config.heads}")
        if config.modality not in ("image", "audio"):
            raise ModelError(f"re-ranker modality {config.modality!r} is unknown; use 'image' or 'audio'")
        if config.concepts and config.modality != "image":
            raise ModelError("concept regions come from an ImageNet classifier: they describe images only")
        if not config.layers and not config.concepts:
            raise ModelError("a re-ranker with layers: 0 needs concept regions (concepts > 0): it has nothing to "
                             "score with")
        self.config = config
        d = config.region_dim
        if config.concepts:  # filled by set_concepts from the backbone's classifier and the text tower
            self.register_buffer("concept_weight", torch.zeros(config.concepts, config.backbone_dim))
            self.register_buffer("concept_bias", torch.zeros(config.concepts))
            self.register_buffer("concept_text", torch.zeros(config.concepts, config.text_dim))
            self.concept_mix = nn.Parameter(torch.tensor([10.0, 10.0]))  # whole-image and region concept scores
            if config.layers:
                self.region_proj = nn.Linear(config.text_dim, d)  # concept regions -> attention width
        else:
            width = min(config.basis_dim, config.backbone_dim) if config.basis_dim else config.backbone_dim
            self.register_buffer("region_mean", torch.zeros(config.backbone_dim))
            self.register_buffer("region_basis", torch.eye(config.backbone_dim)[:, :width].contiguous())
            self.region_proj = nn.Linear(width, d)  # run at embed time; its output is stored in fp16
        if config.layers:
            self.region_pos = nn.Parameter(torch.zeros(config.stored_regions, d))  # where each cell sits
            self.text_proj = nn.Linear(config.text_dim, d)
            self.blocks = nn.ModuleList(CrossBlock(d, config.heads, config.dropout) for _ in range(config.layers))
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 1)
        self.dual_weight = nn.Parameter(torch.tensor(10.0 if config.use_dual_score else 0.0),
                                        requires_grad=config.use_dual_score)
        if config.references:
            self.register_buffer("reference_regions",
                                 torch.zeros(config.references, config.stored_regions, config.stored_dim))

    @torch.no_grad()
    def set_references(self, regions: torch.Tensor) -> None:
        """Keep (references, R, stored_dim) stored regions of training items for :meth:`caption_offsets`."""
        if not self.config.references or regions.shape != self.reference_regions.shape:
            raise ModelError(f"reference regions of shape {tuple(regions.shape)} do not fit a re-ranker with "
                             f"references={self.config.references}")
        self.reference_regions.copy_(regions.float())

    @torch.no_grad()
    def caption_offsets(self, tokens: torch.Tensor, token_mask: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """(T, L, text_dim) token states and (T, L) mask of T captions -> (T,) each caption's mean logit (the dual
        term left out) over the reference items: what a caption scores against any item. Subtracting it changes
        nothing when a caption ranks items, but lets items rank captions fairly: some captions' words match
        every image's concepts and would otherwise top every image's list (text-side hubness). Zeros without
        references."""
        if not self.config.references:
            return torch.zeros(len(tokens))
        refs = self.reference_regions
        k = len(refs)
        out = []
        step = max(1, batch // k)
        for s in range(0, len(tokens), step):
            t, m = tokens[s:s + step], token_mask[s:s + step]
            n = len(t)
            logits = self.forward(t.repeat_interleave(k, 0), m.repeat_interleave(k, 0), refs.repeat(n, 1, 1), None)
            out.append(logits.view(n, k).mean(1))
        return torch.cat(out)

    def mixing_parameters(self) -> list[nn.Parameter]:
        """The scalar weights that mix the dual, concept and learned scores (trained at their own learning rate)."""
        return [q for q in (self.dual_weight, getattr(self, "concept_mix", None)) if q is not None and q.requires_grad]

    @torch.no_grad()
    def set_concepts(self, weight: torch.Tensor, bias: torch.Tensor, names: torch.Tensor) -> None:
        """The concept vocabulary: the backbone's classifier ((concepts, backbone_dim) weight, (concepts,) bias) and
        the text tower's embeddings of the class names ((concepts, text_dim)). Raises :class:`ModelError`."""
        c = self.config
        if not c.concepts or weight.shape != (c.concepts, c.backbone_dim) or bias.shape != (c.concepts,) \
                or names.shape != (c.concepts, c.text_dim):
            raise ModelError(f"concept vocabulary of shapes {tuple(weight.shape)}, {tuple(bias.shape)}, "
                             f"{tuple(names.shape)} does not fit a re-ranker with concepts={c.concepts}, backbone_dim="
                             f"{c.backbone_dim}, text_dim={c.text_dim}")
        self.concept_weight.copy_(weight)
        self.concept_bias.copy_(bias)
        self.concept_text.copy_(nn.functional.normalize(names.float(), dim=-1))

    def project_regions(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, backbone_dim, H, W) backbone feature maps (H * W = ``regions``) -> (B, stored_regions, stored_dim),
        the form the region store keeps (cast to fp16 there). Raises :class:`ModelError` for another grid size."""
        return self.region_output(self.region_input(feature_map))

    def region_input(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The parameter-free part of :meth:`project_regions` (training computes it once per image): concept
        regions (B, grid^2, text_dim), or the cells on the principal-component basis (B, H * W, basis_dim)."""
        if feature_map.dim() != 4 or feature_map.shape[1] != self.config.backbone_dim:
            raise ModelError(f"feature map of shape {tuple(feature_map.shape)}: expected (B, "
                             f"{self.config.backbone_dim}, H, W)")
        if feature_map.shape[2] * feature_map.shape[3] != self.config.regions:
            raise ModelError(f"feature map grid {tuple(feature_map.shape[2:])} has "
                             f"{feature_map.shape[2] * feature_map.shape[3]} cells; the re-ranker was trained on "
                             f"{self.config.regions}")
        if self.config.concepts:
            pooled = nn.functional.adaptive_avg_pool2d(feature_map.float(), self.config.concept_grid)
            cells = pooled.flatten(2).transpose(1, 2)  # (B, grid^2, backbone_dim)
            probs = (cells @ self.concept_weight.T + self.concept_bias).softmax(dim=-1)
            return nn.functional.normalize(probs @ self.concept_text, dim=-1)
        cells = feature_map.float().flatten(2).transpose(1, 2)  # (B, R, backbone_dim)
        return (cells - self.region_mean) @ self.region_basis

    def region_output(self, reduced: torch.Tensor) -> torch.Tensor:
        """The learned part of :meth:`project_regions` (concept regions are stored as they are)."""
        return reduced if self.config.concepts else self.region_proj(reduced)

    @torch.no_grad()
    def fit_basis(self, feature_maps: torch.Tensor, max_cells: int = 20_000, seed: int = 0) -> None:
        """Fit the region basis: mean and top ``basis_dim`` principal directions of the cells of (N,
        backbone_dim, H, W) training feature maps (a seeded sample of at most ``max_cells`` cells). Concept
        regions have no basis."""
        if not self.config.basis_dim or self.config.concepts:
            return
        cells = feature_maps.float().flatten(2).transpose(1, 2).reshape(-1, self.config.backbone_dim)
        g = torch.Generator().manual_seed(seed)
        cells = cells[torch.randperm(len(cells), generator=g)[:max_cells]]
        mean = cells.mean(0)
        _, _, v = torch.linalg.svd(cells - mean, full_matrices=False)
        self.region_mean.copy_(mean)
        k = min(len(v), self.region_basis.shape[1])  # fewer cells than basis_dim: the missing directions stay 0
        self.region_basis.zero_()
        self.region_basis[:, :k].copy_(v[:k].T)

    @staticmethod
    def concept_scores(tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) whole-image and (P,) region scores of P pairs: the cosine of the sentence (the token states'
        mean over real tokens, as MiniLM pools) with the mean concept vector, and each real token's best cosine
        over the (P, R, text_dim) concept regions, averaged over the tokens."""
        keep = token_mask.unsqueeze(-1).float()  # (P, L, 1)
        words = nn.functional.normalize(tokens.float(), dim=-1)
        sentence = nn.functional.normalize((tokens.float() * keep).sum(1), dim=-1)
        concepts = nn.functional.normalize(regions.float(), dim=-1)
        whole = (sentence * nn.functional.normalize(concepts.mean(1), dim=-1)).sum(-1)
        best = torch.einsum("pld,prd->plr", words, concepts).amax(-1)  # (P, L)
        per_word = (best * keep.squeeze(-1)).sum(1) / keep.sum((1, 2)).clamp_min(1.0)
        return whole, per_word

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor,
                dual: torch.Tensor | None = None, region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Match logits of P pairs.

        Args:
            tokens: (P, L, text_dim) text token states; rows may repeat one query (expand, no copy).
            token_mask: (P, L) bool, True for real tokens (False: padding, ignored by the pooling).
            regions: (P, R, stored_dim) stored regions (fp16 from the store is cast to float here).
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
        logit = torch.zeros(tokens.shape[0], device=tokens.device)
        if self.config.concepts:
            whole, per_word = self.concept_scores(tokens, token_mask, regions)
            logit = logit + self.concept_mix[0] * whole + self.concept_mix[1] * per_word
        if self.config.layers:
            keys = regions.float()
            if self.config.concepts:
                keys = self.region_proj(keys)
            keys = keys + self.region_pos[: keys.shape[1]]
            pad = None if region_mask is None else ~region_mask
            x = self.text_proj(tokens.float())
            for block in self.blocks:
                x = block(x, keys, pad)
            x = self.norm(x)
            keep = token_mask.unsqueeze(-1).to(x.dtype)  # (P, L, 1)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (P, d)
            logit = logit + self.head(pooled).squeeze(-1)
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
