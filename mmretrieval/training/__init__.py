"""The parts of the ``train`` stage (:mod:`mmretrieval.stages.train` runs them in order).

==================  ============================================================================================
``data``            trainable items, caption features, datasets (pixels, waveforms, cached backbone features),
                    samplers and the round-robin over modalities
``loop``            one training epoch, and validation through the evaluation code
``selection``       which epoch is kept, and early stopping
``schedule``        learning-rate warm-up and cosine decay
``checkpoint``      per-epoch checkpoints (safetensors) for resuming a killed run
``policy``          ``train.when``: whether a new data version trains a new model, and the record a run keeps
==================  ============================================================================================
"""
