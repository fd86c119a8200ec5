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


def check_cache() -> Path:
    """The cache folder, proven writable before any work that fills it (a tiny model's training
    runs for minutes before it writes): a GPT2BENCH_CACHE that is a file or read-only is one line."""
    from gpt2bench.core.errors import BenchError
    from gpt2bench.core.fsutil import check_writable

    folder = cache_dir()
    try:
        check_writable(folder)
    except OSError as exc:
        raise BenchError(
            f"cannot use the cache folder '{folder}': {exc.strerror or exc} (GPT2BENCH_CACHE moves it)"
        ) from None
    return folder
