"""Errors that reach the user as one line (`error: ...`, exit status 2), importable without Hydra."""

import argparse
import sys


class ConfigError(ValueError):
    """A config value that is well-typed but unusable; reported to the user as one line."""


# Lines of Hydra's and OmegaConf's reports that say where, not what (search paths, key types).
_NOISE = ("Config search path", "provider=", "full_key:", "reference_type=", "object_type=")


def one_line(error: BaseException | str, limit: int = 2000) -> str:
    """An error, and the cause Hydra wraps it in, as one line for the user. Noise lines are dropped; paths make
    messages long and their ends say what to do, so only a text beyond `limit` characters is cut, in the middle."""
    parts: list[str] = []
    causes = (error, getattr(error, "__cause__", None)) if type(error).__module__.startswith("hydra") else (error,)
    for e in causes:
        lines = [ln.strip() for ln in str(e or "").splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
        text = " ".join(" ".join(lines).split())
        if text and not any(text in p for p in parts):
            parts.append(text)
    text = ": ".join(parts) or type(error).__name__
    keep = (limit - 5) // 2
    return text if len(text) <= limit else f"{text[:keep]} ... {text[-keep:]}"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage error as one line, `error: MESSAGE (see PROG --help)`, and exit status 2; or, given
    `raises`, that exception with the message, for a caller that reports it."""

    def __init__(self, *args, raises: type[Exception] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raises = raises

    def error(self, message: str) -> None:  # type: ignore[override]
        text = f"{message} (see {self.prog} --help)"
        if self.raises:
            raise self.raises(text)
        self.exit(2, f"error: {text}\n")


def fail(error: BaseException | str) -> int:
    """Tell the user what went wrong in one line on stderr; the exit status for it (2)."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2
