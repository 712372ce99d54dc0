"""Settings shared by the benchmark files (none yet: each file declares its own spec and budget)."""
