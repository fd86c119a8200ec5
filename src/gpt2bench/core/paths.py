"""Where gpt2bench keeps bundled assets and its cache."""

import os
from pathlib import Path

ASSETS = Path(__file__).parents[1] / "assets"
TOKENIZER_DIR = ASSETS / "gpt2-tokenizer"
DEFAULT_TEXT = ASSETS / "text" / "wiki.test.raw"


def cache_dir() -> Path:
    """GPT2BENCH_CACHE, else $XDG_CACHE_HOME/gpt2bench, else ~/.cache/gpt2bench."""
    env = os.environ.get("GPT2BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gpt2bench"
