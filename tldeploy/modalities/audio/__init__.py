"""Audio through an image backbone: files -> waveform -> log-mel spectrogram -> the network.

The split, recorded in the preprocessing contract (`AudioPreprocessing`) so that training, export,
calibration, bench and predict all apply the same transform:

- on the host: decode (soundfile), mix down to mono, resample to the contract's rate (polyphase,
  scipy), pad or crop to the clip length (random crop in training, centre otherwise);
- in the network (`LogMelFrontEnd`, exported inside the ONNX graph): log-mel spectrogram,
  normalisation by the training set's mean and std, one channel (or three repeats of it).

The spectrogram is written with ordinary operators (a strided convolution whose kernels are the
Hann-windowed DFT basis, a MatMul with the mel filters, Log) rather than ONNX's STFT operator
(opset 17): every backend runs these, while TensorRT's ONNX parser does not take STFT or DFT. So
one exported graph serves ONNX Runtime and TensorRT alike, no backend needs a preprocessing step
of its own, and parity checks cover the front end wherever the model runs. FP16 and INT8 builds
leave the front end in float32 (`engines.fp16.frontend_nodes`).

The STFT is not centred (frames start at sample 0, no padding). Power spectrum, HTK mel scale,
triangular filters with unit peak, natural log of (mel energy + `log_offset`).
"""


from tldeploy.modalities.audio.augment import AudioDataset, augment_waveform
from tldeploy.modalities.audio.config import AudioAugmentConfig, LogMelConfig
from tldeploy.modalities.audio.io import fit_clip, read_audio
from tldeploy.modalities.audio.preprocessing import AudioPreprocessing, log_mel

__all__ = [
    "AudioAugmentConfig",
    "AudioDataset",
    "AudioPreprocessing",
    "LogMelConfig",
    "augment_waveform",
    "fit_clip",
    "log_mel",
    "read_audio",
]
