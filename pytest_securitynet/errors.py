"""Errors that end a run with a message naming what went wrong and how to fix it."""

from __future__ import annotations


class SecurityNetError(Exception):
    """Base class: every error the harness raises on purpose."""


class CatalogError(SecurityNetError):
    """A catalog file or entry is malformed; the message names file, entry and field."""


class MissingFileError(SecurityNetError):
    """A weights or data file is not in the cache or mirror and cannot be downloaded."""


class ChecksumError(SecurityNetError):
    """A file's sha256 differs from the one the catalog records."""


class UnsafeCheckpointError(SecurityNetError):
    """A checkpoint needs arbitrary code to unpickle; it was refused and nothing ran."""


class UnreadableFileError(SecurityNetError):
    """A weights or cache file exists but cannot be read (truncated, damaged, not what it claims)."""


class CacheError(SecurityNetError):
    """The cache directory cannot be used (its parent is a file) or written where a write is needed."""
