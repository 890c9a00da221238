"""What `tldeploy bench` is asked to do (`BenchConfig`), with its CI gates (a `Tolerance`), checked on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tldeploy.bench.latency import LatencyConfig
from tldeploy.errors import ConfigError
from tldeploy.parity import Tolerance

# The limits a bench gate may set (bench.schema.json's gate names): a violated one makes
# `tldeploy bench` exit non-zero.
BENCH_GATES = ("max_top1_drop", "min_top1_agreement", "min_cosine")


@dataclass(frozen=True)
class BenchConfig:
    artifacts: tuple[Path, ...]
    output: Path
    reference: Path | None = None  # a tldeploy checkpoint (.pt)
    data: Path | None = None  # images: class folders (labelled) or a flat folder
    limit: int | None = None  # at most this many images for parity and accuracy
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    latency: LatencyConfig = LatencyConfig()
    threads: int | None = None
    device: str = "cpu"  # where the PyTorch reference and plain ONNX files run
    time_reference: bool = True
    gates: Tolerance = Tolerance()  # limited to BENCH_GATES; an accuracy drop is checked only on labelled --data
    ood_data: Path | None = None  # out-of-distribution inputs: AUROC, FPR at the stored TPR, decision agreement
    max_ood_disagreement: float | None = None  # share (0-1) of inputs whose unknown/known decision may differ from the reference's
    robustness: str | None = None  # a suite (bench/robustness: "all", "corruptions", "attacks", names); needs --reference and --data
    epsilons: tuple[float, ...] = (1.0, 4.0)  # adversarial L-infinity budgets: pixel levels of 255, or 1/255 of full scale (audio)
    disagreement: int | None = None  # search this many inputs for disagreements within each budget
    max_robustness_flip: float | None = None  # share (0-1): an artifact's largest corruption flip rate may not exceed it
    report: Path | None = None  # default: OUTPUT with .md
    plots: Path | None = None  # default: OUTPUT's stem + "_plots"
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("output", "reference", "data", "ood_data", "report", "plots"):  # str paths from library callers
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "artifacts", tuple(Path(a) for a in self.artifacts))
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        if not self.artifacts:
            raise ConfigError("no artifacts given; pass one or more .onnx, .engine or .pt files to benchmark")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"--batch-sizes must be positive integers, got {','.join(map(str, self.batch_sizes))}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.reference is not None and self.reference.suffix not in (".pt", ".pth"):
            raise ConfigError(f"--reference {self.reference} must be a tldeploy checkpoint (.pt) from 'tldeploy train'")
        other = [n for n in self.gates.limits if n not in BENCH_GATES]
        if other:
            raise ConfigError(f"bench gates are {', '.join(BENCH_GATES)}; {', '.join(other)} is not one")
        if self.gates.limits and self.reference is None:
            raise ConfigError("the --max-top1-drop / --min-top1-agreement / --min-cosine gates compare with the reference; pass --reference RUN_DIR/model.pt")
        if self.gates.limits and self.data is None:
            raise ConfigError("the gates need real images; pass --data VAL_DIR")
        if self.ood_data is not None and self.data is None:
            raise ConfigError("--ood-data is set against in-distribution inputs; pass --data VAL_DIR too")
        if self.max_ood_disagreement is not None and (self.ood_data is None or not 0 <= self.max_ood_disagreement <= 1):
            raise ConfigError("--max-ood-disagreement is a share in [0, 1] and needs --ood-data DIR")
        self._check_robustness()
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be cpu or cuda, got {self.device!r}")

    def _check_robustness(self) -> None:
        from tldeploy.bench.robustness import check_suite_text

        object.__setattr__(self, "epsilons", tuple(self.epsilons))
        if not self.epsilons or any(not e > 0 for e in self.epsilons):  # checked with or without a suite: a typo fails now
            raise ConfigError(f"--epsilon takes positive budgets (pixel levels of 255), got {','.join(map(str, self.epsilons)) or 'none'}")
        suite = ({True: "all", False: None}[self.robustness] if isinstance(self.robustness, bool)  # library callers of a flag
                 else self.robustness)
        if suite is None and self.max_robustness_flip is not None:
            suite = "all"
        if suite is None and self.disagreement is not None:
            suite = "none"
        object.__setattr__(self, "robustness", suite)
        if suite is None:
            return
        check_suite_text(suite)
        if self.reference is None or self.data is None:
            raise ConfigError("--robustness and --disagreement compare with the reference on real inputs; "
                              "pass --reference RUN_DIR/model.pt and --data VAL_DIR")
        if self.disagreement is not None and self.disagreement < 1:
            raise ConfigError(f"--disagreement is a number of inputs to search and must be at least 1, got {self.disagreement}")
        if self.max_robustness_flip is not None and not 0 <= self.max_robustness_flip <= 1:
            raise ConfigError(f"--max-robustness-flip is a share in [0, 1], got {self.max_robustness_flip}")

    @property
    def report_path(self) -> Path:
        return self.report or self.output.with_suffix(".md")

    @property
    def plots_dir(self) -> Path:
        return self.plots or self.output.with_name(self.output.stem + "_plots")
