"""mmer_rt: serve MMER speech emotion recognition with onnxruntime, without torch or transformers."""

from .audio import SAMPLE_RATE, load_audio, normalize
from .errors import AudioError, IntegrityError, ManifestError, MMERError, ModelDirError, TextError

__version__ = "0.1.0"

__all__ = [
    "SAMPLE_RATE", "load_audio", "normalize",
    "MMERError", "AudioError", "TextError", "ModelDirError", "IntegrityError", "ManifestError",
]
