"""A tiny random CLIP saved as a sentence-transformers folder, built offline: a test fixture and a worked example.

A real CLIP folder (e.g. one saved with ``SentenceTransformer("clip-ViT-B-32").save(path)`` on a machine with
network access) is used the same way; in ``params.yaml``::

    model:
      text_model: /models/clip-vit-b-32            # CLIP's text encoder as the text tower
      image_backbone: st:/models/clip-vit-b-32     # CLIP's image encoder (frozen) as the image tower

``python -m tests.tiny_clip OUT_DIR`` writes one.
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def tiny_vocab() -> dict[str, int]:
    """Byte-level BPE vocabulary without merges: every printable ASCII character, alone and word-final."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = [*SPECIALS, *chars, *(c + "</w>" for c in chars)]
    return {t: i for i, t in enumerate(tokens)}


def save_tiny_clip(folder: Path, image_size: int = 32, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight CLIP (text and vision: ``layers`` blocks of width ``hidden``; patches of 8 px) with its
    tokenizer and image processor, saved as a sentence-transformers folder. Takes a few seconds, needs no network."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = tiny_vocab()
    max_positions = 64
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_positions)
    block = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
             "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**block, "vocab_size": len(vocab), "max_position_embeddings": max_positions,
                     "bos_token_id": vocab[SPECIALS[0]], "eos_token_id": vocab[SPECIALS[1]],
                     "pad_token_id": vocab[SPECIALS[1]]},
        vision_config={**block, "image_size": image_size, "patch_size": 8},
        projection_dim=hidden // 2,
    )
    torch.manual_seed(seed)
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(str(folder))
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    SentenceTransformer(str(folder), device="cpu").save(str(folder))  # adds modules.json & co: an ST folder
    return folder


if __name__ == "__main__":
    print(save_tiny_clip(Path(sys.argv[1])))
