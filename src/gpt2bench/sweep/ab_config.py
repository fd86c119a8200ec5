"""The `ab:` section of a sweep config: how `gpt2bench ab` pairs two versions on the sweep's cells.

ab:
  rounds: 40            # per backend and cell; each round measures BASE and NEW back to back
  pairs: 2              # fresh worker pairs the rounds are split between, start order alternating
  round_warmup: 0       # untimed runs a side makes at the start of each later round (the first
                        # round warms up with the config's `warmup`)
  threshold: 0.05       # a change counts when its interval lies beyond +-5%
  alpha: 0.05           # over all of the run's comparisons (Holm)
  metrics: [tpot_ms, ttft_ms, e2e_ms]

A round's repetitions per side are the config's `repeats`; 1 is best. Measured on a 2-core Zen 4
(2026-12-03, onnx-int8, A/A): the machine's speed jumps by up to 15% between rounds seconds apart,
while runs a fraction of a second apart agree within ~2%. With 3 repetitions a side a round the
median ratio's standard error over 16 rounds was 2.5%; with 1 repetition and 40 rounds it was 0.8%
in less time, and a warm-up run between the halves of a pair (round_warmup: 1) raised it to 1.4%.
The worker started second of a pair ran 4-7% faster than the first, whichever side it was (A/A,
pinned to one CPU: NEW/BASE 0.92-0.97 with BASE started first, 1.04-1.07 with NEW first): so the
rounds are split between `pairs` worker pairs with the start order alternating, and an even number
of pairs cancels that offset (report/ab.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import yaml

from gpt2bench.sweep.yaml_nodes import _fail, _mapping, _Node, _positive_int, _scalar

AB_KEYS = {"rounds", "pairs", "round_warmup", "threshold", "alpha", "metrics"}
AB_METRICS = ("tpot_ms", "ttft_ms", "e2e_ms")


@dataclass(frozen=True)
class AbSettings:
    rounds: int = 40
    pairs: int = 2
    round_warmup: int = 0
    threshold: float = 0.05
    alpha: float = 0.05
    metrics: tuple[str, ...] = AB_METRICS

    def blocks(self) -> list[range]:
        """The rounds of each worker pair: `rounds` split as evenly as can be."""
        cuts = [self.rounds * i // self.pairs for i in range(self.pairs + 1)]
        return [range(a, b) for a, b in itertools.pairwise(cuts)]

    def check(self) -> str | None:
        """What is wrong with settings given on the command line, or None."""
        if self.pairs < 1:
            return f"pairs must be at least 1, got {self.pairs}"
        if self.rounds < 3 * self.pairs:
            return f"rounds must be at least 3 a worker pair ({3 * self.pairs} for {self.pairs}), got {self.rounds}"
        if not 0 <= self.threshold < 1:
            return f"threshold must be in [0, 1), a fraction (0.1 = 10%), got {self.threshold:g}"
        if not 0 < self.alpha < 1:
            return f"alpha must be in (0, 1), got {self.alpha:g}"
        unknown = [m for m in self.metrics if m not in AB_METRICS]
        if unknown or not self.metrics:
            return f"unknown metric '{unknown[0] if unknown else ''}' (choose from: {', '.join(AB_METRICS)})"
        return None


def parse_ab(src: str, node: _Node) -> AbSettings:
    fields = _mapping(src, node, AB_KEYS)
    defaults = AbSettings()
    metrics = defaults.metrics
    if "metrics" in fields:
        n = fields["metrics"]
        if not isinstance(n.node, yaml.SequenceNode):
            raise _fail(src, n, f"expected a list of metrics ({', '.join(AB_METRICS)})")
        metrics = tuple(_scalar(src, _Node(item, f"{n.path}[{i}]"), str) for i, item in enumerate(n.node.value))
    settings = AbSettings(
        rounds=_positive_int(src, fields["rounds"]) if "rounds" in fields else defaults.rounds,
        pairs=_positive_int(src, fields["pairs"]) if "pairs" in fields else defaults.pairs,
        round_warmup=_positive_int(src, fields["round_warmup"], 0)
        if "round_warmup" in fields
        else defaults.round_warmup,
        threshold=_scalar(src, fields["threshold"], float) if "threshold" in fields else defaults.threshold,
        alpha=_scalar(src, fields["alpha"], float) if "alpha" in fields else defaults.alpha,
        metrics=metrics,
    )
    if problem := settings.check():
        raise _fail(src, node, problem)
    return settings
