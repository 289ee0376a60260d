"""The exceptions the exporter raises: every user-facing export failure is one of these, with a clear message."""

from mmer_rt.errors import MMERError


class ExportError(MMERError):
    """An export that cannot proceed: an output directory in the way, a bad option, a failed conversion."""


class ParityError(ExportError):
    """A precision variant whose outputs differ from the PyTorch fp32 model by more than its tolerance."""
