import importlib
import pkgutil
import subprocess
import sys

import tldeploy


def test_import_tldeploy_is_light():
    code = "import tldeploy, tldeploy.cli, sys; print(sorted(m for m in ('torch','onnxruntime','tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_imports_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    names = [m.name for m in pkgutil.walk_packages(tldeploy.__path__, "tldeploy.") if not m.name.endswith("__main__")]
    assert "tldeploy.train.training" in names
    for name in names:
        importlib.import_module(name)
