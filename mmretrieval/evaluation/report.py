"""Small self-contained HTML reports (no external assets) for people who would rather look than read JSON."""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mmretrieval.evaluation.metrics import EvalSet


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f4f4f4}"
             "td:first-child{text-align:left}")
    parts = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{parts}</body></html>")


def _img_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.stem)}' style='max-width:100%' src='data:image/png;base64,{data}'>"


def mode_columns(result: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(header, metrics by unprefixed name) per model and search mode of an evaluate result: each alias's
    ``metrics`` as its ``vector`` column, then each mode of its ``modes`` (``reranked/t2i_mrr`` -> column
    ``reranked``, row ``t2i_mrr``)."""
    from mmretrieval.evaluation.modes import SEPARATOR, VECTOR

    columns = []
    for alias in ("challenger", "champion"):
        model = result.get(alias)
        if not model:
            continue
        columns.append((f"{alias} (v{model['version']}) {VECTOR}", model["metrics"]))
        by_mode: dict[str, dict[str, float]] = {}
        for key, value in (model.get("modes") or {}).items():
            mode, name = key.split(SEPARATOR, 1)
            by_mode.setdefault(mode, {})[name] = value
        columns += [(f"{alias} (v{model['version']}) {mode}", values) for mode, values in by_mode.items()]
    return columns


def write_evaluation_html(path: Path, result: dict[str, Any], figures: dict[str, Path] | None = None) -> Path:
    """The evaluate stage's report: the run, a table of every metric per model and search mode side by side (the
    dual encoder's ``vector`` column, a ``reranked`` one where the version serves a gated re-ranker) beside its
    chance level, and the ``figures`` (title -> PNG)."""
    from mmretrieval.evaluation.metrics import CHANCE_SUFFIX

    columns = mode_columns(result)
    keys = sorted({k for _, m in columns for k in m if not k.endswith(CHANCE_SUFFIX)})
    chance = {k: v for _, m in columns for k, v in m.items() if k.endswith(CHANCE_SUFFIX)}

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    rows = [[k] + [fmt(m.get(k)) for _, m in columns] + [fmt(chance.get(k + CHANCE_SUFFIX))] for k in keys]
    header = ["metric"] + [title for title, _ in columns] + ["chance (random ranking)"]
    info = _table([[k, str(result.get(k))] for k in ("dataset", "data_version", "split", "test_items")],
                  ["field", "value"])
    sections = [("Run", info), ("Metrics", _table(rows, header))]
    sections += [(title, _img_tag(p)) for title, p in (figures or {}).items()]
    path.write_text(page(f"Evaluation of {result['dataset']}", sections), encoding="utf-8")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_curve_png(path: Path, sim: np.ndarray, eval_set: EvalSet, max_k: int = 50, media: str = "image") -> Path:
    """Recall@K for K = 1..max_k in both directions (``media``: what the items are, for the legend)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, s, rel in ((f"text → {media}", sim, eval_set.relevant), (f"{media} → text", sim.T, eval_set.relevant.T)):
        keep = rel.any(axis=1)
        order = np.argsort(-s[keep], axis=1)
        first = np.take_along_axis(rel[keep], order, axis=1).argmax(axis=1) + 1
        ks = np.arange(1, min(max_k, s.shape[1]) + 1)
        ax.plot(ks, [(first <= k).mean() for k in ks], label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def retrieval_grid_png(path: Path, sim: np.ndarray, eval_set: EvalSet, images: list[Any], queries: int = 5,
                       top: int = 5) -> Path:
    """The top images for a few test captions; green frame = relevant, red = not."""
    import numpy as np

    plt = _pyplot()
    q_idx = np.linspace(0, len(eval_set.captions) - 1, num=min(queries, len(eval_set.captions))).astype(int)
    top = min(top, sim.shape[1])
    fig, axes = plt.subplots(len(q_idx), top, figsize=(2 * top, 2.3 * len(q_idx)), dpi=80, squeeze=False)
    for r, q in enumerate(q_idx):
        for c, j in enumerate(np.argsort(-sim[q])[:top]):
            ax = axes[r][c]
            ax.imshow(images[j])
            ax.set_xticks([])
            ax.set_yticks([])
            color = "green" if eval_set.relevant[q, j] else "red"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_xlabel(f"{sim[q, j]:.2f}", fontsize=8)
        axes[r][0].set_title(textwrap.shorten(eval_set.captions[q], 60), fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
