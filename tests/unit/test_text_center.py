"""``model.text_center``: text vectors minus the training captions' mean before the text head, the mean saved with
the model's weights and restored on load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmretrieval.core.errors import ModelError
from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig, save


def text_only(center: bool) -> DualEncoder:
    return DualEncoder(ModelConfig(text_model="unused", text_dim=4, image_backbone="", image_size=0, embed_dim=4,
                                   text_head="none", text_center=center))


def test_centring_spreads_texts_that_share_a_large_common_direction() -> None:
    common = torch.tensor([3.0, 0.0, 0.0, 0.0])
    captions = common + torch.tensor([[0.0, 1, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, -1, 0]])
    plain, centred = text_only(False), text_only(True)
    centred.fit_text_mean(captions)
    assert torch.allclose(centred.text_mean, common)
    before, after = plain.project_text(captions), centred.project_text(captions)
    assert (before @ before.T).min() > 0.7  # all near the common direction
    assert float(after[0] @ after[1]) == pytest.approx(-1.0, abs=1e-6)  # opposite once the mean is gone
    assert torch.allclose(after.norm(dim=1), torch.ones(4))


def test_the_mean_is_saved_and_restored_and_an_unfitted_call_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    net = text_only(True)
    net.fit_text_mean(torch.tensor([[1.0, 2, 3, 4], [3.0, 2, 1, 0]]))
    save(net, tmp_path)
    restored = text_only(True)
    restored.load_state_dict(load_file(str(tmp_path / "weights.safetensors")), strict=True)
    assert torch.equal(restored.text_mean, torch.tensor([2.0, 2, 2, 2]))
    with pytest.raises(ModelError, match="needs model.text_center"):
        text_only(False).fit_text_mean(torch.ones(2, 4))
    assert "text_mean" not in text_only(False).state_dict()  # models saved without centring load unchanged
