"""Which corruptions and attacks a robustness run covers (`Suite`), and the run itself: every entry
(the reference first) on the same corrupted and adversarial inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy.bench.robustness.attacks import ATTACKS, Domain, against_reference, attack_rows
from tldeploy.bench.robustness.audio import AUDIO_CORRUPTIONS
from tldeploy.bench.robustness.image import IMAGE_CORRUPTIONS
from tldeploy.data.folders import even_spread
from tldeploy.errors import ConfigError

log = logging.getLogger(__name__)

SEVERITIES = (1, 3, 5)
CORRUPTIONS = {"image": IMAGE_CORRUPTIONS, "audio": AUDIO_CORRUPTIONS}
GROUPS = ("all", "corruptions", "attacks", "none")


@dataclass(frozen=True)
class Suite:
    corruptions: tuple[str, ...]
    attacks: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, modality: str) -> Suite:
        """`text`: comma-separated groups (all, corruptions, attacks, none) and names of this
        modality's corruptions and of the attacks (fgsm, pgd), e.g. "jpeg,gaussian_noise,pgd"."""
        check_suite_text(text)
        mine = CORRUPTIONS[modality]
        picked: list[str] = []
        for item in (t.strip() for t in text.split(",") if t.strip()):
            if item in ("all", "corruptions"):
                picked += list(mine)
            if item in ("all", "attacks"):
                picked += list(ATTACKS)
            if item not in GROUPS:
                if item not in mine and item not in ATTACKS:
                    other = next(m for m, names in CORRUPTIONS.items() if item in names)
                    raise ConfigError(f"--robustness {item} is an {other} corruption and this is an {modality} model; "
                                      f"its corruptions are {', '.join(mine)}")
                picked.append(item)
        picked = list(dict.fromkeys(picked))
        return cls(tuple(p for p in mine if p in picked), tuple(a for a in ATTACKS if a in picked))

    def to_dict(self) -> dict[str, list[str]]:
        return {"corruptions": list(self.corruptions), "attacks": list(self.attacks)}


def check_suite_text(text: str) -> None:
    """A one-line ConfigError unless every item of `text` is a group or a known name."""
    known = {*GROUPS, *ATTACKS, *(n for names in CORRUPTIONS.values() for n in names)}
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in known]
    if bad or not items:
        hint = " (an artifact right after --robustness is read as its suite: write --robustness all, or put it last)" if any(
            "." in t or "/" in t for t in bad) else ""
        raise ConfigError(f"--robustness {text!r}: unknown suite item(s) {', '.join(bad) or '(none given)'}{hint}; choose from "
                          f"{', '.join(GROUPS)}, the attacks {', '.join(ATTACKS)}, image corruptions {', '.join(IMAGE_CORRUPTIONS)}, "
                          f"audio corruptions {', '.join(AUDIO_CORRUPTIONS)}")


def corrupted_inputs(paths: list[Path], prep, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The contract's inputs for `paths` after corruption `name` at `severity`, seeded per file."""
    table = CORRUPTIONS[prep.modality]
    fn = table[name]
    out = []
    for i, p in enumerate(paths):
        rng = np.random.default_rng([seed, i, severity, list(table).index(name)])
        out.append(prep.source_input(fn(prep.read_source(p), severity, rng, prep)))
    return np.stack(out).astype(np.float32)


def measure_robustness(entries: list[Any], prep, paths: list[Path], labels: np.ndarray | None, reference_model, suite: Suite,
                       epsilons: tuple[float, ...] = (1.0, 4.0), disagreement: int | None = None,
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per entry (entries[0] the reference; objects with .name and .runner): corruption rows
    (accuracy, top-1 flip rate and largest logit difference against the reference on the same
    input), attack rows (the same on the reference's adversarial inputs), the mean corruption error relative to the reference, and
    with `disagreement` the search on that many inputs (`disagreement.search_disagreements`)."""
    from tldeploy.runtime.runners import run_batches

    ref = entries[0]
    if (suite.corruptions or suite.attacks) and labels is None:
        raise ConfigError("--robustness measures accuracy and needs labelled --data (class folders); "
                          "--robustness none --disagreement N needs no labels")
    rows: dict[str, dict[str, Any]] = {e.name: {"suite": suite.to_dict(), "corruptions": [], "attacks": [],
                                                "disagreement": None} for e in entries}
    for name in suite.corruptions:
        for s in SEVERITIES:
            x = corrupted_inputs(paths, prep, name, s, seed)
            logits = {e.name: run_batches(e.runner, x)["logits"] for e in entries}
            for e in entries:
                rows[e.name]["corruptions"].append({
                    "corruption": name, "severity": s, "accuracy": float(np.mean(logits[e.name].argmax(1) == labels)),
                    **against_reference(logits[e.name], logits[ref.name], e is ref)})
    dom = Domain.of(prep)
    raw = dom.raw(paths, prep) if suite.attacks or disagreement else None
    reference_model.eval()
    if suite.attacks:
        for name, attacked in attack_rows(entries, reference_model, dom, raw, labels, suite.attacks, epsilons, seed).items():
            rows[name]["attacks"] = attacked
    if disagreement:
        from tldeploy.bench.robustness.disagreement import search_disagreements

        pick = even_spread(len(raw), disagreement)
        found = search_disagreements(reference_model, dom, raw[pick], entries[1:], epsilons, [paths[i] for i in pick])
        for name, per_eps in found.items():
            rows[name]["disagreement"] = [f.to_dict() for f in per_eps]
    for e in entries:
        rows[e.name].update(_summary(rows[e.name], rows[ref.name], suite))
    return rows


def _summary(mine: dict[str, Any], ref: dict[str, Any], suite: Suite) -> dict[str, float | None]:
    """mCE relative to the reference (mean over corruptions of the ratio of summed errors over
    severities; 1.0 where the reference makes none) and the largest corruption flip rate."""
    if not suite.corruptions:
        return {"mce_vs_reference": None, "max_flip_rate": None}
    ratios = []
    for name in suite.corruptions:
        err = sum(1 - r["accuracy"] for r in mine["corruptions"] if r["corruption"] == name)
        ref_err = sum(1 - r["accuracy"] for r in ref["corruptions"] if r["corruption"] == name)
        ratios.append(err / ref_err if ref_err > 0 else 1.0)
    flips = [r["flip_rate"] for r in mine["corruptions"] if r["flip_rate"] is not None]
    return {"mce_vs_reference": float(np.mean(ratios)), "max_flip_rate": max(flips) if flips else None}


def bench_robustness(entries: list[Any], prep, paths: list[Path], labels, suite_text: str, epsilons: tuple[float, ...],
                     disagreement: int | None, max_flip: float | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`tldeploy bench --robustness`: the rows per entry and the --max-robustness-flip failures.
    entries[0] is the reference's active TorchRunner; its model crafts the attacks, on its device."""
    rows = measure_robustness(entries, prep, paths, labels, entries[0].runner.model, Suite.parse(suite_text, prep.modality),
                              epsilons, disagreement)
    failures = []
    for e in entries[1:]:
        row = rows[e.name]
        if row["max_flip_rate"] is not None:
            log.info("%s: mCE vs the reference %.3f, largest corruption flip rate %.2f%%", e.name, row["mce_vs_reference"],
                     100 * row["max_flip_rate"])
        for d in row["disagreement"] or []:
            log.info("%s: disagreement search at eps %g: %d of %d inputs%s", e.name, d["epsilon"], d["found"], d["searched"],
                     "" if d["found"] else " (none within the budget)")
        if max_flip is not None and (row["max_flip_rate"] or 0) > max_flip:
            failures.append(f"{e.name}: a corruption flips {row['max_flip_rate']:.2%} of top-1 answers against the reference "
                            f"(--max-robustness-flip {max_flip:.2%})")
    return rows, failures
