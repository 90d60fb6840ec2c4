"""Progress of long steps: a tqdm bar on a terminal, plain lines on stderr otherwise (logs, CI, pipes), so that a
slow run never looks hung."""

import sys
import time
from typing import TextIO

PLAIN_INTERVAL = 10.0  # seconds between plain progress lines within one step


class Progress:
    """Count `total` units of one step: `with Progress(n, "eval ats") as progress: ... progress.update()`.

    On a terminal it draws a tqdm bar with rate and ETA (when tqdm is installed). Elsewhere it prints plain lines to
    `stream` (default: stderr): one every `interval` seconds while the step runs, with rate and ETA, and one when it
    ends. `shown=False` prints nothing (the other processes of a multi-process run).
    """

    def __init__(self, total: int, description: str, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL,
                 shown: bool = True):
        self.total, self.description, self.interval, self.shown = total, description, interval, shown
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.started = self.last_line = time.perf_counter()
        self.bar = self._tqdm() if shown and _is_terminal(self.stream) else None

    def _tqdm(self):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total, desc=self.description, leave=False, file=self.stream)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.shown and time.perf_counter() - self.last_line >= self.interval and self.done < self.total:
            elapsed = time.perf_counter() - self.started
            rate = self.done / elapsed
            self._line(f"{self.done}/{self.total}, {rate:.1f}/s, about {(self.total - self.done) / rate:.0f} s left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown:
            self._line(f"{self.done}/{self.total} done in {time.perf_counter() - self.started:.1f} s")

    def _line(self, text: str) -> None:
        self.last_line = time.perf_counter()
        print(f"{self.description}: {text}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()


def note(text: str, stream: TextIO | None = None) -> None:
    """Print a one-line message for the user (a warning, a hint) to stderr, whether or not it is a terminal."""
    print(text, file=sys.stderr if stream is None else stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["Progress", "note"]
