"""Media decoding and checks (images, audio, video, caption text, near-duplicate hashes) shared by validation,
cleaning, training, embedding and queries. No torch.
"""
