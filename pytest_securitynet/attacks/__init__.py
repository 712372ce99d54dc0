"""Attack and defense algorithms, importable and testable without pytest."""
