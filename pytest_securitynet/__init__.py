"""pytest-securitynet: measure ML attacks and defenses on public pretrained image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"
