"""Which epoch training keeps."""

from mmretrieval.training.selection import selection_key


def test_the_validation_metric_decides_and_ties_go_to_the_lower_training_loss() -> None:
    epochs = {1: (0.50, 2.0), 2: (0.70, 2.5), 3: (0.70, 1.5)}  # epoch: (val metric, training loss)
    best = max(epochs, key=lambda e: selection_key(*epochs[e]))
    assert best == 3


def test_without_a_usable_validation_metric_the_lowest_training_loss_is_kept() -> None:
    losses = {1: 2.0, 2: 1.2, 3: 1.4}  # e.g. fewer validation items than train.min_val_items
    best = max(losses, key=lambda e: selection_key(None, losses[e]))
    assert best == 2
