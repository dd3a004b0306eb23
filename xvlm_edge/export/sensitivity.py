"""Per-layer sensitivity search for INT8: the MatMul/Gemm nodes of one graph worth keeping in float, found by measuring.

For one graph, with the same quantiser the export uses:
1. quantise it and measure each output's error against the fp32 ONNX on a few inputs (relative RMS,
   ||q - f|| / ||f||, so outputs of any scale compare; the graph's error is its worst output's);
2. quantise it once more per candidate node, with that node alone kept in float: the error left is how much
   that node alone costs (a node whose quantisation hurts leaves a much smaller error when kept float);
3. a node is sensitive when keeping it alone in float cuts the graph's error by at least `MIN_GAIN`; keep the
   sensitive nodes in float, best first, re-measuring the combination, until the error is at most `target`
   or `budget` nodes are kept.

Greedy on solo measurements rather than a re-ranking after each pick: quantisation errors of different layers
add up roughly independently, and it costs one quantisation per candidate plus one per kept node (a search
over pairs would cost the square). That is still one calibration per candidate for the static vision graph
(2.4 s each for the tiny preset's 51 MatMuls here, minutes each at base size), which is why the search is
opt-in (`export_model(..., search_sensitive=N)`).

Measured on the tiny preset's text graph (random weights, dynamic INT8): its 12 weight MatMuls cost about
the same; the best one kept float cuts the 2.6% error by 9% (seed 0: none sensitive) or 13% (seed 1: that
one kept). With one weight of `layer.1.intermediate.dense` set to 50x the largest (an outlier that
stretches the per-tensor int8 scale) the error is 43%; that node alone kept float brings it back to 2.7%,
and every other node leaves 43%.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xvlm_edge.errors import InputError

log = logging.getLogger(__name__)

#: Relative RMS error (worst output) at which the search stops keeping nodes in float (1%).
SENSITIVITY_TARGET = 0.01
#: Least share of the graph's error that keeping one node in float must remove for it to count as sensitive.
MIN_GAIN = 0.1
#: (src, dst, node names kept in float) -> writes the quantised `dst`; the export's quantiser for that graph.
Quantizer = Callable[[Path, Path, Sequence[str]], None]


@dataclass
class SensitivityResult:
    """What the search measured on one graph; `kept_float` is what to pass the quantiser."""

    target: float
    budget: int
    min_gain: float
    error_before: dict[str, float]
    error_after: dict[str, float]
    #: node -> worst relative error with that node alone kept in float, best (smallest) first
    error_alone: dict[str, float] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)

    def record(self, top: int = 5) -> dict:
        """The manifest's record: errors before and after, the kept nodes and the `top` ranked candidates."""
        return {
            "metric": "relative RMS error per output vs the fp32 ONNX, ||q - f|| / ||f||",
            "target": self.target,
            "budget": self.budget,
            "min_gain": self.min_gain,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "kept_float": self.kept_float,
            "ranked": [{"node": n, "error_alone": e} for n, e in list(self.error_alone.items())[:top]],
            "candidates_measured": len(self.error_alone),
        }


def relative_errors(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """{output: ||candidate - reference|| / ||reference||} (0 for an empty or all-zero reference)."""
    out = {}
    for name, ref in reference.items():
        ref64, got64 = ref.astype(np.float64), candidate[name].astype(np.float64)
        norm = float(np.linalg.norm(ref64))
        out[name] = float(np.linalg.norm(got64 - ref64)) / norm if norm > 0 else 0.0
    return out


def _run(path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int | None) -> dict[str, np.ndarray]:
    """Every output of `path` on every feed, concatenated per output (flattened) for one norm over all feeds."""
    from xvlm_edge.runtime.onnxruntime_backend import ort_session

    sess = ort_session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(names, feed) for feed in feeds]
    return {n: np.concatenate([r[i].ravel() for r in runs]) for i, n in enumerate(names)}


def search_sensitive_nodes(
    fp32_path: Path,
    quantize: Quantizer,
    feeds: Sequence[dict[str, np.ndarray]],
    candidates: Sequence[str],
    budget: int,
    target: float = SENSITIVITY_TARGET,
    min_gain: float = MIN_GAIN,
    threads: int | None = None,
) -> SensitivityResult:
    """Search the nodes of `candidates` (names in `fp32_path`) worth keeping in float, at most `budget` of them.

    `quantize` is the quantiser the export applies to this graph; `feeds` a few ONNX Runtime input dicts.
    """
    if budget < 1:
        raise InputError(f"the sensitivity search needs a budget of at least 1 node, got {budget}")
    if not feeds:
        raise InputError("the sensitivity search needs at least one input to measure on")
    reference = _run(fp32_path, feeds, threads)
    with tempfile.TemporaryDirectory() as work:
        trial = Path(work) / f"{fp32_path.stem}.trial.onnx"

        def errors_keeping(kept: Sequence[str]) -> dict[str, float]:
            quantize(fp32_path, trial, kept)
            return relative_errors(reference, _run(trial, feeds, threads))

        before = errors_keeping(())
        result = SensitivityResult(target=target, budget=budget, min_gain=min_gain, error_before=before, error_after=before)
        if max(before.values()) <= target:
            log.info("sensitivity %s: error %.2e already within %.2e, nothing kept in float", fp32_path.stem, max(before.values()), target)
            return result
        alone = {node: max(errors_keeping([node]).values()) for node in candidates}
        result.error_alone = dict(sorted(alone.items(), key=lambda item: item[1]))
        sensitive = [node for node, error in result.error_alone.items() if error <= (1 - min_gain) * max(before.values())]
        after = before
        for node in sensitive[:budget]:
            if max(after.values()) <= target:
                break
            result.kept_float.append(node)
            after = errors_keeping(result.kept_float)
        result.error_after = after
    log.info(
        "sensitivity %s: error %.2e -> %.2e keeping %s in float",
        fp32_path.stem, max(before.values()), max(result.error_after.values()), result.kept_float,
    )  # fmt: skip
    return result


__all__ = ["MIN_GAIN", "SENSITIVITY_TARGET", "Quantizer", "SensitivityResult", "relative_errors", "search_sensitive_nodes"]
