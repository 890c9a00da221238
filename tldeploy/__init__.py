"""tldeploy: from transfer learning to a deployed, verified classifier.

Importing the package must stay cheap: no torch, onnxruntime or tensorrt here.
"""

__version__ = "0.1.0"
