"""Small self-contained HTML reports (no external assets) for people who would rather look than read JSON."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


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


def write_evaluation_html(path: Path, result: dict[str, Any]) -> Path:
    models = [(alias, result[alias]) for alias in ("challenger", "champion") if result.get(alias)]
    keys = sorted({k for _, m in models for k in m["metrics"]})
    rows = [[k] + [f"{m['metrics'].get(k, float('nan')):.4f}" for _, m in models] for k in keys]
    header = ["metric"] + [f"{alias} (v{m['version']})" for alias, m in models]
    info = _table([[k, str(result.get(k))] for k in ("dataset", "data_version", "split", "test_items")],
                  ["field", "value"])
    path.write_text(page(f"Evaluation of {result['dataset']}", [("Run", info), ("Metrics", _table(rows, header))]),
                    encoding="utf-8")
    return path
