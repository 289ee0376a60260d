"""mmer_rt: serve MMER speech emotion recognition with onnxruntime, without torch or transformers."""

from .audio import SAMPLE_RATE, load_audio, normalize
from .batching import BatchBudget
from .errors import (
    AudioError, DeviceError, InferenceError, IntegrityError, ManifestError, MMERError, ModelDirError, TextError,
)
from .recognizer import Prediction, Recognizer, Utterance

__version__ = "0.1.0"

__all__ = [
    "Recognizer", "Prediction", "Utterance", "BatchBudget",
    "SAMPLE_RATE", "load_audio", "normalize",
    "MMERError", "AudioError", "TextError", "ModelDirError", "IntegrityError", "ManifestError", "DeviceError",
    "InferenceError",
]
