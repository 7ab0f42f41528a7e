"""Networks (docs/method.md §3, §9) and the model file: the package's face.

* :mod:`.speaker`: :class:`SpeakerModel` and :func:`build_speaker_model` (front-end + ECAPA-TDNN);
* :mod:`.model_file`: the model file ``<system>/model.pt`` (:func:`save_model_file`,
  :func:`read_model_file`, :func:`load_speaker_model`);
* :mod:`.ecapa`, :mod:`.heads`, :mod:`.wavlm`: the networks.

Embedding extraction with a loaded model is :mod:`ssrl.extract`.
"""

from .ecapa import ECAPATDNN
from .heads import AAMSoftmax, DINOHead, SoftmaxHead, build_head
from .model_file import MODEL_FORMAT, ModelFileError, load_speaker_model, read_model_file, save_model_file
from .speaker import WAVLM_MAX_SECONDS, SpeakerModel, build_speaker_model, default_max_seconds
from .wavlm import LayerWeighting, WavLM, WavLMCheckpointError, WavLMFrontend
from .wavlm_checkpoint import load_wavlm

__all__ = [
    "ECAPATDNN",
    "DINOHead",
    "AAMSoftmax",
    "SoftmaxHead",
    "build_head",
    "LayerWeighting",
    "WavLM",
    "WavLMFrontend",
    "WavLMCheckpointError",
    "load_wavlm",
    "SpeakerModel",
    "build_speaker_model",
    "MODEL_FORMAT",
    "ModelFileError",
    "save_model_file",
    "read_model_file",
    "load_speaker_model",
    "WAVLM_MAX_SECONDS",
    "default_max_seconds",
]
