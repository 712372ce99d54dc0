"""Task performance (SecurityNet §3): top-1 train and test accuracy and the overfitting gap."""

from __future__ import annotations

from pytest_securitynet.results.spec import BenchmarkSpec, Metric

# Tolerances: a re-run differs by floating point only (0.01); the database's numbers come from
# other samples and code (accuracies 0.02, the gap 0.03). See docs/regression.md.
SPEC = BenchmarkSpec(
    id="task_performance.accuracy", title="Task performance", section="task", short="task", position=10,
    metrics=(Metric("test_accuracy", higher_is_better=True, baseline=0.01, reported=0.02),
             Metric("train_accuracy", higher_is_better=True, baseline=0.01, reported=0.02),
             Metric("overfit_gap", baseline=0.01, reported=0.03)),
    highlights=("test_accuracy", "overfit_gap"),
)


def top1_correct(target, data):
    """Per sample: whether the top-1 prediction is the label."""
    return target.predict(data).cpu() == data.labels


def test_accuracy(target, train_set, test_set, record, intervals):
    train_correct, test_correct = top1_correct(target, train_set), top1_correct(target, test_set)
    test_accuracy = intervals.mean(test_correct)
    record(train_accuracy=intervals.mean(train_correct), test_accuracy=test_accuracy,
           overfit_gap=intervals.difference(train_correct, test_correct),
           n_train=len(train_set), n_test=len(test_set))
    assert 0.0 <= test_accuracy.value <= 1.0
