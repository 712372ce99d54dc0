"""Backdoor attack and detection algorithms of SecurityNet §3.3/§4.3 (Table 1), importable without pytest.

- BadNets poisoning and a small deterministic trainer, for known-answer tests
  (``backdoor_badnets``).
- Neural Cleanse (Wang et al., S&P 2019), all labels optimised in one batched problem, plus the
  one-label-at-a-time reference (``backdoor_neural_cleanse``).
- STRIP (Gao et al., ACSAC 2019) (``backdoor_strip``).
- NEO (Udeshi et al., IEEE Trans. Reliability 2022) (``backdoor_neo``).

Models are ``nn.Module`` in eval mode taking float images in [0, 1] [N, C, H, W] and returning
logits; datasets are uint8 tensors [N, C, H, W].
"""

from __future__ import annotations

from .backdoor_badnets import add_patch_trigger, poison_dataset, train_classifier, trigger_images_uint8
from .backdoor_neo import NeoResult, default_block_size, dominant_colours, neo
from .backdoor_neural_cleanse import (
    NeuralCleanseResult,
    NeuralCleanseSchedule,
    mad_anomaly_index,
    neural_cleanse,
    neural_cleanse_sequential,
    save_trigger_png,
)
from .backdoor_strip import StripResult, strip, strip_verdict, superimpose
from .common import predict_labels

__all__ = [
    "NeoResult",
    "NeuralCleanseResult",
    "NeuralCleanseSchedule",
    "StripResult",
    "add_patch_trigger",
    "default_block_size",
    "dominant_colours",
    "mad_anomaly_index",
    "neo",
    "neural_cleanse",
    "neural_cleanse_sequential",
    "poison_dataset",
    "predict_labels",
    "save_trigger_png",
    "strip",
    "strip_verdict",
    "superimpose",
    "train_classifier",
    "trigger_images_uint8",
]
