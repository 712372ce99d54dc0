"""The harness: a run's settings and the per-process state that loads a catalog model with its data,
sampled member/non-member/auxiliary sets and black-box access. Usable without pytest."""
