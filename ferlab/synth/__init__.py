"""Synthetic expression data: real faces with Action Units rendered at known intensities."""

from ferlab.synth.faces import (
    EMOTION_AUS,
    RENDERABLE_AUS,
    SourceFace,
    contact_sheet,
    emotion_aus,
    identity_variants,
    load_source_faces,
    render,
)

__all__ = [
    "EMOTION_AUS",
    "RENDERABLE_AUS",
    "SourceFace",
    "contact_sheet",
    "emotion_aus",
    "identity_variants",
    "load_source_faces",
    "render",
]
