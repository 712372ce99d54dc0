"""Black-box access to a target model: batched posteriors, a query counter, top-k and label-only views.

Outputs of dataset samples are cached per (split, index) as float32 logits, so every benchmark on
a model shares one forward pass per sample, whether it reads posteriors (their softmax) or
log-probabilities (their log-softmax); queries are still counted per benchmark.
"""

from __future__ import annotations

import torch
from torch import nn

from pytest_securitynet.attacks.common import to_float
from pytest_securitynet.harness.data import LabeledSet


class PosteriorCache:
    """Logits of one model on one dataset's splits, filled lazily per sample; read as posteriors or log-probabilities."""

    def __init__(self, model: nn.Module, split_sizes: dict[str, int], num_classes: int,
                 device: torch.device, batch_size: int):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.split_sizes = split_sizes
        self.num_classes = num_classes
        self._values: dict[str, torch.Tensor] = {}
        self._known: dict[str, torch.Tensor] = {}
        self.forward_samples = 0

    def get(self, data: LabeledSet) -> torch.Tensor:
        """Posteriors [N, C] on the device for `data`, running the model only on samples not seen before."""
        return self._logits(data).softmax(dim=1)

    def get_log_probs(self, data: LabeledSet) -> torch.Tensor:
        """Log-probabilities [N, C] (a float32 log-softmax of the logits) for `data`, from the same cache."""
        return self._logits(data).log_softmax(dim=1)

    def _logits(self, data: LabeledSet) -> torch.Tensor:
        if data.split not in self._values:
            size = self.split_sizes[data.split]
            self._values[data.split] = torch.zeros(size, self.num_classes, device=self.device)
            self._known[data.split] = torch.zeros(size, dtype=torch.bool, device=self.device)
        values, known = self._values[data.split], self._known[data.split]
        idx = data.indices.to(self.device)
        missing = (~known[idx]).nonzero().flatten()
        if len(missing):
            values[idx[missing]] = self.forward_logits(data.images[missing.cpu()])
            known[idx[missing]] = True
        return values[idx]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Posteriors of raw uint8 or [0,1] float images, in batches, without caching."""
        return self.forward_logits(images).softmax(dim=1)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits of raw uint8 or [0,1] float images, in batches, without caching."""
        outs = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                x = to_float(batch, self.device) if batch.dtype == torch.uint8 else batch.to(self.device).float()
                outs.append(self.model(x).float())
        self.forward_samples += len(images)
        return torch.cat(outs) if outs else torch.zeros(0, self.num_classes, device=self.device)


class BlackBoxTarget:
    """What a black-box attacker sees: full posteriors for any inputs, one query per input."""

    def __init__(self, cache: PosteriorCache, top_k: int | None = None, label_only: bool = False):
        self._cache = cache
        self.top_k = top_k
        self.label_only = label_only
        self.queries = 0

    @property
    def num_classes(self) -> int:
        return self._cache.num_classes

    @property
    def device(self) -> torch.device:
        return self._cache.device

    def posteriors(self, data: LabeledSet | torch.Tensor) -> torch.Tensor:
        """The API's answer for every input: posteriors, or their top-k / one-hot top-1 view."""
        full = self._cache.get(data) if isinstance(data, LabeledSet) else self._cache.forward(data)
        self.queries += len(full)
        if self.label_only:
            return nn.functional.one_hot(full.argmax(dim=1), self.num_classes).float()
        if self.top_k is not None:
            # Keep the k largest probabilities as returned; the rest read as 0 (not renormalised).
            top = full.topk(self.top_k, dim=1)
            return torch.zeros_like(full).scatter_(1, top.indices, top.values)
        return full

    def log_probs(self, data: LabeledSet | torch.Tensor) -> torch.Tensor:
        """The log-probability API: a float32 log-softmax of the logits for every input, one query each.

        Unlike float32 posteriors it does not round confident answers to exactly 1.0. Only the full
        API has it: a top-k or label-only view raises.
        """
        if self.top_k is not None or self.label_only:
            raise ValueError("a top-k or label-only API answers with no log-probabilities")
        out = self._cache.get_log_probs(data) if isinstance(data, LabeledSet) else \
            self._cache.forward_logits(data).log_softmax(dim=1)
        self.queries += len(out)
        return out

    def predict(self, data: LabeledSet | torch.Tensor) -> torch.Tensor:
        """Top-1 labels (counts as queries like `posteriors`)."""
        return self.posteriors(data).argmax(dim=1)

    def topk(self, k: int) -> BlackBoxTarget:
        """A view returning only the top-k posteriors; shares the cache and the query counter's owner."""
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"top-k needs 1 <= k <= {self.num_classes}, got {k}")
        return _View(self, top_k=k)

    def labels_only(self) -> BlackBoxTarget:
        """A view returning one-hot top-1 labels only."""
        return _View(self, label_only=True)


class _View(BlackBoxTarget):
    """A restricted view whose queries also count on the target it came from."""

    def __init__(self, parent: BlackBoxTarget, top_k: int | None = None, label_only: bool = False):
        super().__init__(parent._cache, top_k=top_k, label_only=label_only)
        self._parent = parent

    def posteriors(self, data: LabeledSet | torch.Tensor) -> torch.Tensor:
        out = super().posteriors(data)
        self._parent.queries += len(out)
        return out
