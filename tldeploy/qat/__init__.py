"""Quantization-aware training for one INT8 target (`tldeploy qat`): see `run.py`."""

from tldeploy.qat.config import QatConfig, QatResult
from tldeploy.qat.run import qat

__all__ = ["QatConfig", "QatResult", "qat"]
