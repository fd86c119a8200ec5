"""The `repeats: auto` keys of the sweep schema (see measure/stopping.py for the rule)."""

from __future__ import annotations

import yaml

from gpt2bench.core.errors import UsageError
from gpt2bench.measure.stopping import Adaptive
from gpt2bench.sweep.yaml_nodes import _fail, _Node, _positive_int, _positive_seconds, _scalar

ADAPTIVE_KEYS = ("target_ci", "min_repeats", "max_repeats", "cell_budget_s")


def _adaptive(src: str, top: dict[str, _Node]) -> Adaptive | None:
    """`repeats: auto` and its settings, or None for a fixed count (whose settings are then an error)."""
    auto = "repeats" in top and isinstance(top["repeats"].node, yaml.ScalarNode) and top["repeats"].node.value == "auto"
    given = [k for k in ADAPTIVE_KEYS if k in top]
    if not auto:
        if given:
            raise _fail(src, top[given[0]], "applies to repeats: auto only")
        return None
    defaults = Adaptive()
    adaptive = Adaptive(
        _scalar(src, top["target_ci"], float) if "target_ci" in top else defaults.target_ci,
        _positive_int(src, top["min_repeats"]) if "min_repeats" in top else defaults.min_repeats,
        _positive_int(src, top["max_repeats"]) if "max_repeats" in top else defaults.max_repeats,
        _positive_seconds(src, top["cell_budget_s"]) if "cell_budget_s" in top else defaults.budget_s,
    )
    try:
        adaptive.validate()
    except UsageError as exc:
        raise _fail(src, top["repeats"], str(exc)) from None
    return adaptive
