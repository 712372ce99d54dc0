"""Task performance (SecurityNet §3): top-1 train and test accuracy and the overfitting gap."""

from __future__ import annotations


def top1_accuracy(target, data) -> float:
    return (target.predict(data).cpu() == data.labels).float().mean().item()


def test_accuracy(target, train_set, test_set, record):
    train_accuracy = top1_accuracy(target, train_set)
    test_accuracy = top1_accuracy(target, test_set)
    record(train_accuracy=train_accuracy, test_accuracy=test_accuracy,
           overfit_gap=train_accuracy - test_accuracy,
           n_train=len(train_set), n_test=len(test_set))
    assert 0.0 <= test_accuracy <= 1.0
