"""The fused channel-attention kernels on an NVIDIA GPU: correctness, then speed.

    python benchmarks/ca_kernel_gpu.py            # from the repository root; a few minutes

1. Builds cpp_plugins with CUDA for this GPU (and sm_87/sm_90) through `tldeploy plugins build`.
2. Checks the kernels against PyTorch's ChannelAttention on the GPU, on fresh random inputs of
   many shapes: FP32 within 1e-5 and FP16 within 1e-2 of the largest output (relative), with the
   output filled with NaN before every run so an element the kernels never write fails.
3. Times the fused kernels, PyTorch eager and torch.compile on the same inputs with CUDA events
   (median of many runs) and prints a table. The targets: at batch 1 and 32, for 1280x7x7 and
   512x14x14, the fused kernels at least 3x faster than eager and not slower than torch.compile.

Exit status 1 when a check or a target fails. Results go to benchmarks/results/ca_kernel_gpu.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tldeploy.engines.plugins import CaLibrary, PluginBuildConfig, build_plugins  # noqa: E402
from tldeploy.models.heads import ChannelAttention  # noqa: E402

CHECK_SHAPES = [(1, 1280, 7, 7, 16), (32, 1280, 7, 7, 16), (1, 512, 14, 14, 16), (32, 512, 14, 14, 16), (8, 2048, 1, 1, 16),
                (2, 2048, 7, 7, 16), (4, 64, 56, 56, 16), (3, 7, 3, 5, 1), (5, 33, 9, 11, 4), (1, 1, 1, 1, 1), (2, 17, 1, 13, 8),
                (64, 320, 5, 3, 32), (1, 96, 112, 112, 16)]
TIME_SHAPES = [(1, 1280, 7, 7, 16), (32, 1280, 7, 7, 16), (1, 512, 14, 14, 16), (32, 512, 14, 14, 16)]
RUNS = 300


def module(c: int, r: int, seed: int) -> ChannelAttention:
    torch.manual_seed(seed)
    m = ChannelAttention(c, r)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5 / np.sqrt(p.shape[-1]))
    return m.cuda().eval()


def weights(m: ChannelAttention, dtype) -> list[torch.Tensor]:
    return [t.detach().to(dtype).contiguous() for t in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)]


def check(lib: CaLibrary) -> list[dict]:
    rows = []
    for i, (n, c, h, w, r) in enumerate(CHECK_SHAPES):
        m = module(c, r, i)
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
            x = (torch.randn(n, c, h, w, device="cuda") * 2 + 0.5).to(dtype)
            ws = weights(m, dtype)
            with torch.no_grad():  # the reference in float32 on the same (rounded) values
                mf = ChannelAttention(c, r).cuda().eval()
                mf.fc1.weight.copy_(ws[0].float())
                mf.fc1.bias.copy_(ws[1].float())
                mf.fc2.weight.copy_(ws[2].float())
                mf.fc2.bias.copy_(ws[3].float())
                expected = mf(x.float())
            out = torch.full_like(x, float("nan"))
            lib.cuda_forward(x, *ws, out=out)
            torch.cuda.synchronize()
            err = float((out.float() - expected).abs().max() / expected.abs().max())
            ok = bool(torch.isfinite(out).all()) and err <= tol
            rows.append({"shape": [n, c, h, w], "reduction": r, "dtype": str(dtype).split(".")[1], "rel_err": err, "tolerance": tol, "ok": ok})
            print(f"check {n}x{c}x{h}x{w} r={r} {rows[-1]['dtype']}: rel err {err:.2e} (<= {tol:g}) {'ok' if ok else 'FAIL'}", flush=True)
    return rows


def median_ms(fn, runs: int = RUNS) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def time_shape(lib: CaLibrary, shape: tuple[int, ...], seed: int) -> dict:
    n, c, h, w, r = shape
    m = module(c, r, seed)
    x = torch.randn(n, c, h, w, device="cuda")
    ws = weights(m, torch.float32)
    out = torch.empty_like(x)
    workspace = torch.empty(lib.lib.tldeploy_ca_cuda_workspace_size(n, c, ws[0].shape[0]), dtype=torch.uint8, device="cuda")
    compiled = torch.compile(m)
    with torch.no_grad():
        compiled(x)  # compile outside the timing
        launch, _ = lib.bind_cuda(x, *ws, out=out, workspace=workspace)  # pointers resolved once, as an engine does
        fused = median_ms(launch)
        eager = median_ms(lambda: m(x))
        comp = median_ms(lambda: compiled(x))
    row = {"shape": [n, c, h, w], "fused_ms": fused, "eager_ms": eager, "compile_ms": comp,
           "vs_eager": eager / fused, "vs_compile": comp / fused}
    row["ok"] = row["vs_eager"] >= 3.0 and row["vs_compile"] >= 1.0
    return row


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible; this script needs one", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    archs = ";".join(sorted({"87", "90", f"{major}{minor}"}))
    with tempfile.TemporaryDirectory() as tmp:
        build = build_plugins(PluginBuildConfig(build_dir=Path(tmp), cuda="on", tensorrt="off", cuda_archs=archs))
        print("\n".join(build.summary))
        lib = CaLibrary(build.ca_library)
        checks = check(lib)
        times = [time_shape(lib, shape, 100 + i) for i, shape in enumerate(TIME_SHAPES)]
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, median of {RUNS} runs (CUDA events)")
    print(f"{'shape':>16} {'fused ms':>9} {'eager ms':>9} {'compile ms':>10} {'x eager':>8} {'x compile':>9}")
    for t in times:
        print(f"{'x'.join(map(str, t['shape'])):>16} {t['fused_ms']:9.4f} {t['eager_ms']:9.4f} {t['compile_ms']:10.4f} "
              f"{t['vs_eager']:8.2f} {t['vs_compile']:9.2f}{'' if t['ok'] else '  (target missed)'}")
    ok = all(c["ok"] for c in checks) and all(t["ok"] for t in times)
    out = Path(__file__).parent / "results" / "ca_kernel_gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": checks, "timing": times,
                               "passed": ok}, indent=2) + "\n")
    print(f"{'all checks and targets met' if ok else 'FAILED'}; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
