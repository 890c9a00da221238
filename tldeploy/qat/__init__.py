"""Quantization-aware training for one INT8 target (`tldeploy qat`): see `run.py`."""

from tldeploy.qat.run import QatConfig, QatResult, qat

__all__ = ["QatConfig", "QatResult", "qat"]
