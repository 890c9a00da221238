"""Runners for testing the bench stage itself (shared with benchmarks/compare_noise.py)."""

import numpy as np

from tldeploy.runtime.runners import BaseRunner


class Heavier(BaseRunner):
    """A runner slowed on purpose: it runs `inner` on its feed plus a copy of the first `share` of
    it (at least one image), in one call, so the extra work is the same kind of work."""

    def __init__(self, inner: BaseRunner, share: float = 0.14) -> None:
        super().__init__()
        self.inner, self.share, self.name = inner, share, f"heavier:{inner.name}"

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return self.inner.input_spec()

    def _infer(self, feed):
        x = feed["images"]
        return self.inner.infer({"images": np.concatenate([x, x[: max(1, round(len(x) * self.share))]])})
