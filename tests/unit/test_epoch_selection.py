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


def test_the_selector_keeps_the_best_epoch_and_stops_after_patience_epochs_without_improvement() -> None:
    from mmretrieval.training.selection import EpochSelector

    selector = EpochSelector(patience=2)
    kept = [e for e, (val, loss) in enumerate([(0.5, 2.0), (0.6, 1.8), (0.6, 1.9), (0.55, 1.7)], start=1)
            if selector.update(e, val, loss)]
    assert kept == [1, 2] and selector.best_epoch == 2
    assert selector.should_stop  # epochs 3 and 4 did not beat 0.6


def test_without_a_validation_metric_training_never_stops_early_and_resumes_where_it_was() -> None:
    from mmretrieval.training.selection import EpochSelector

    selector = EpochSelector(patience=1)
    for epoch, loss in enumerate([2.0, 2.5, 3.0], start=1):
        selector.update(epoch, None, loss)
    assert not selector.should_stop and selector.best_epoch == 1
    resumed = EpochSelector.from_state(selector.state())
    assert resumed == selector and resumed.update(4, None, 1.0) and resumed.best_epoch == 4


def test_the_schedule_warms_up_then_decays_to_zero() -> None:
    import torch

    from mmretrieval.training.schedule import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_share=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and lrs[9] > 0.95 and max(lrs) == lrs[9]
    assert lrs[99] < 0.01 and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
