"""Per-epoch training checkpoints: a killed run resumes where it stopped, in the same MLflow run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from mmretrieval.core.io import atomic_dir, read_json, write_json
from mmretrieval.core.params import Params


def fingerprint(params: Params, data_version: str) -> str:
    """Identifies a training job: same params and data -> same checkpoint folder (resume)."""
    parts = {"data": data_version, "model": params.model, "train": params.train, "augment": params.augment,
             "split": params.split}
    raw = json.dumps(parts, default=lambda section: section.model_dump(), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Checkpoint:
    """``weights.safetensors`` (now), ``best.safetensors`` (the kept epoch), ``state.pt`` (optimiser and schedule,
    plain tensors read back with ``weights_only=True``) and ``meta.json``, replaced atomically each epoch
    (:func:`~mmretrieval.core.io.atomic_dir`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "meta.json").is_file()

    def save(self, net: Any, best_state: dict[str, Any], opt: Any, sched: Any, meta: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import save_file

        with atomic_dir(self.folder) as tmp:
            weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(weights, str(tmp / "weights.safetensors"))
            save_file({k: v.cpu().contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "state.pt")
            write_json(tmp / "meta.json", meta)

    def load(self, net: Any, opt: Any, sched: Any, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore ``net``/``opt``/``sched``; returns the kept epoch's weights and the meta dict."""
        import torch
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(self.folder / "weights.safetensors"), device=device))
        best = load_file(str(self.folder / "best.safetensors"), device=device)
        state = torch.load(self.folder / "state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return best, read_json(self.folder / "meta.json", "checkpoint meta")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
