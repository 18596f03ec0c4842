"""The package version, in one place (manifests record it; sync compares it)."""

__version__ = "0.1.0"
