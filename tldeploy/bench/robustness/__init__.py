"""Robustness parity: does the deployed artifact break where its reference does?

For every artifact and the PyTorch reference, on the same inputs:
- corruptions (`image`: eight after ImageNet-C; `audio`: noise, gain, time shift, band limit) at
  severities 1, 3 and 5, applied to the raw input before the contract's preprocessing, seeded per
  file: accuracy, and the share of inputs whose top-1 differs from the reference's on the same
  corrupted input (the artifact's own flips, apart from the corruption's effect on the reference);
  a mean corruption error relative to the reference;
- adversarial examples crafted on the reference (`attacks`): the reference's accuracy under attack
  and each artifact's on the same inputs (transfer to the deployed precision);
- the disagreement search (`disagreement`): inputs within the budget on which an artifact's
  top-1 differs from the reference's.
`suite` chooses what runs (`Suite`) and runs it (`measure_robustness`).
"""

from tldeploy.bench.robustness.suite import (
    CORRUPTIONS,
    SEVERITIES,
    Suite,
    bench_robustness,
    check_suite_text,
    measure_robustness,
)

__all__ = ["CORRUPTIONS", "SEVERITIES", "Suite", "bench_robustness", "check_suite_text", "measure_robustness"]
