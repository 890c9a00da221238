"""How strong the robustness suite's corruptions were on the inputs it fed, measured on the inputs
themselves and not read from the severity tables: what the integration tests can assert whatever
the trained model does with them."""

import numpy as np

from tldeploy.bench.robustness import SEVERITIES
from tldeploy.bench.robustness.suite import corrupted_inputs


def _lag_share(moved: np.ndarray, clean: np.ndarray) -> float:
    """How far `moved` is shifted against `clean` (cross-correlation peak), as a share of the clip."""
    n = clean.shape[-1]
    r = np.fft.irfft(np.fft.rfft(moved, 2 * n) * np.conj(np.fft.rfft(clean, 2 * n)), 2 * n)
    k = int(np.argmax(r))
    return min(k, 2 * n - k) / n


def corruption_strengths(paths, prep, name: str) -> list[float]:
    """Per severity (1, 3, 5), the mean over `paths` of what corruption `name` did to the network's
    input: a time shift by how far it moved the clip, every other corruption by the energy it
    changed relative to the input's own."""
    clean = np.stack([prep.source_input(prep.read_source(p)) for p in paths]).astype(np.float64)
    axes = tuple(range(1, clean.ndim))
    out = []
    for s in SEVERITIES:
        x = corrupted_inputs(paths, prep, name, s).astype(np.float64)
        if name == "time_shift":
            out.append(float(np.mean([_lag_share(a, b) for a, b in zip(x, clean, strict=True)])))
        else:
            out.append(float(np.mean(np.sum((x - clean) ** 2, axis=axes) / np.sum(clean**2, axis=axes))))
    return out
