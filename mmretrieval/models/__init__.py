"""Model code: towers, the dual encoder, losses, and saving/loading (safetensors + JSON config)."""
