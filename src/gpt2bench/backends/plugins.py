"""Backends from other packages. A package declares an entry point in the `gpt2bench.backends`
group naming a module; importing that module registers its backends with `@register`, exactly as
the built-in ones do. So a team can benchmark its own engine through the same harness without
forking gpt2bench:

    [project.entry-points."gpt2bench.backends"]
    my-engine = "my_package.gpt2bench_backend"

A plugin that fails to import is reported (by `gpt2bench backends`, and with an unknown-backend
error) instead of breaking every command.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "gpt2bench.backends"


def load_plugins() -> list[str]:
    """Import every plugin module; one line per plugin that failed."""
    errors = []
    for point in entry_points(group=GROUP):
        try:
            point.load()
        except Exception as exc:  # anything a third-party import can raise
            errors.append(
                f"backend plugin '{point.name}' ({point.value}) failed to import: {type(exc).__name__}: {exc}"
            )
    return errors
