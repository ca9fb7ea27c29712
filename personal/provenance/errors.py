"""Typed errors of the provenance package: each is one clear line for the user."""

from __future__ import annotations

from privacy.errors import HomebodyError


class ProvenanceError(HomebodyError):
    """Base of every labelling, manifest or watermark failure."""


class LabelError(ProvenanceError):
    """A label configuration is invalid (unknown language or placement, empty wording)."""


class ManifestError(ProvenanceError):
    """A manifest cannot be built or read (bad provenance fields, unreadable JSON)."""


class WatermarkError(ProvenanceError):
    """A watermark key or setting is unusable, or the text is too short to score."""
