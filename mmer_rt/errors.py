"""The exceptions mmer_rt raises: every user-facing failure is one of these, with a message naming the input."""


class MMERError(Exception):
    """Base class of every error mmer_rt raises on purpose."""


class AudioError(MMERError, ValueError):
    """Audio that cannot be used: missing, unreadable, truncated, empty, non-finite, too short, of an unsupported
    dtype or sample rate."""


class TextError(MMERError, ValueError):
    """A transcript that cannot be used."""


class ModelDirError(MMERError):
    """A model directory that is missing files, has an unknown manifest version or is otherwise unusable."""


class IntegrityError(ModelDirError):
    """A graph file whose SHA-256 does not match the one recorded in the manifest."""


class ManifestError(MMERError, ValueError):
    """A data manifest (JSONL of utterances) with a bad row; the message names the file and line."""


class InferenceError(MMERError, RuntimeError):
    """onnxruntime failed running a graph on input that passed every check: out of memory, a device fault or a bug.
    With ``predict_batch(errors="return")`` only the item that fails alone gets it; its batch-mates are rerun."""


class DeviceError(MMERError):
    """A requested device or precision that this machine or this model directory cannot provide."""


class CorpusError(MMERError, ValueError):
    """A corpus that cannot be imported or synthesised: not the expected layout, a missing tool, a bad option."""


class ResultsError(MMERError, ValueError):
    """A results file (JSONL written by ``mmer-rt score``) that cannot be resumed: a line that is not a result."""


class TimelineError(MMERError, ValueError):
    """A speaker-turn (RTTM) or timed-transcript file or list that cannot be used; the message names file and line."""
