"""Golden data: real validation inputs, the raw files they came from, and the PyTorch reference's
outputs on them, as `.npz` and in Polygraphy's JSON format; golden/README.md gives the Polygraphy
command that checks the FP32 ONNX at verify's own FP32 tolerance (`polygraphy_commands`)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tldeploy.contract import OUTPUT_NAMES, Contract
from tldeploy.data.folders import load_inputs

GOLDEN = 32  # inputs: enough to see a flipped top-1 (3%), few enough to ship and run anywhere


@dataclass
class Golden:
    paths: list[Path]  # the source files, in order
    labels: np.ndarray | None
    inputs: np.ndarray  # the contract's inputs for them
    reference: dict[str, np.ndarray]  # logits, probs, cam of the PyTorch reference


def make_golden(contract: Contract, data: Path, checkpoint: Path, n: int = GOLDEN) -> Golden:
    """`n` inputs spread over DATA (every class keeps its share) and the reference's outputs."""
    from tldeploy.runtime.runners import TorchRunner, run_batches

    x, labels, paths = load_inputs(Path(data), contract.classes, contract.preprocessing, n)
    with TorchRunner(checkpoint) as ref:
        reference = run_batches(ref, x)
    return Golden(list(paths), labels, x, reference)


def _array(a: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}


def batches(n: int, batch: int | None) -> list[slice]:
    step = batch or n
    return [slice(i, i + step) for i in range(0, n, step)]


def polygraphy_inputs(input_name: str, x: np.ndarray, batch: int | None) -> str:
    """A list of feed dicts, one per iteration (`--load-inputs`)."""
    return json.dumps([{input_name: _array(x[s])} for s in batches(len(x), batch)], indent=1)


def polygraphy_outputs(outputs: dict[str, np.ndarray], batch: int | None, runner: str = "pytorch-reference") -> str:
    """A RunResults with one IterationResult per iteration (`--load-outputs`)."""
    n = len(outputs[OUTPUT_NAMES[0]])
    iterations = [
        {"outputs": {k: {"values": _array(outputs[k][s]), "polygraphy_class": "LazyArray"} for k in OUTPUT_NAMES},
         "runtime": 0.0, "runner_name": runner, "polygraphy_class": "IterationResult"}
        for s in batches(n, batch)
    ]
    return json.dumps({"lst": [[runner, iterations]], "polygraphy_class": "RunResults"}, indent=1)


def polygraphy_commands(max_logit_diff: float, raw: bool) -> list[str]:
    """The Polygraphy runs (from the bundle folder) that check the FP32 ONNX against the reference
    at verify's FP32 logit tolerance. Polygraphy fails an element only when it misses both --atol
    and --rtol, so `--rtol 0` makes `--atol` the whole test: every output element within it."""
    tol = f"--atol {max_logit_diff:g} --rtol 0"
    cmds = [f"polygraphy run model.onnx --onnxrt --load-inputs golden/inputs.json --load-outputs golden/reference.json {tol}"]
    if raw:
        cmds.append(f"polygraphy run model_raw.onnx --onnxrt --load-inputs golden/inputs_raw.json --load-outputs golden/reference.json {tol}")
    return cmds


def readme(n: int, max_logit_diff: float, raw: bool) -> str:
    """golden/README.md: what the files are, and how to check the FP32 ONNX without tldeploy."""
    cmds = "\n".join(f"    {c}" for c in polygraphy_commands(max_logit_diff, raw))
    return f"""# Golden inputs

{n} validation inputs (`files/`), the model's inputs for them (`inputs.npz`, `inputs.json`{", and `inputs_raw.*` for model_raw.onnx" if raw else ""})
and the PyTorch reference's outputs (`reference.npz`, `reference.json`): logits, probs and CAM.

`tldeploy verify` runs every artifact of the bundle on them under the manifest's tolerances.
Without tldeploy, [Polygraphy](https://github.com/NVIDIA/TensorRT/tree/main/tools/Polygraphy)
checks the FP32 ONNX at verify's FP32 tolerance (every output element within {max_logit_diff:g}
of the reference; `--rtol 0` makes that the only test). From the bundle folder:

{cmds}

Polygraphy's default tolerance (1e-5) is tighter than two correct FP32 runs on different CPUs
agree (1.9e-5 measured on an AMD EPYC); verify's FP32 tolerance also admits TensorRT's TF32
convolutions. FP16 and INT8 artifacts are held to top-1 agreement and cosine, which an element-wise
comparison does not express: check them with `tldeploy verify`.
"""
