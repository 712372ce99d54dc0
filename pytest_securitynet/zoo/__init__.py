"""The zoo: turning catalog entries into files (resolver, cache, mirrors, checksums) and files into
ready models and image tensors (architectures, weights, datasets, the demo models). No pytest."""
