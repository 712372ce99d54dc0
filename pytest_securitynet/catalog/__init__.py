"""The catalog: model and dataset entries (data files), their schema, import from the SecurityNet
database, computed annotations and statistics. No pytest, no torch model loading."""
