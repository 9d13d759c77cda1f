"""Errors a user can cause, and the exit codes every command shares (DESIGN.md section 4)."""

import sys
from contextlib import contextmanager

EXIT_OK = 0  # every record done
EXIT_SOME_FAILED = 1  # finished, but some records went to the errors file
EXIT_USAGE = 2  # bad flag or malformed input: nothing was written
EXIT_INTERRUPTED = 130  # Ctrl-C: the output is consistent and the run resumes


class StmedError(Exception):
    """An error the user can fix; printed as one line, never with a traceback."""

    exit_code = EXIT_USAGE


class InputError(StmedError):
    """Malformed input file or bad flag value."""


class RecordError(StmedError):
    """One bad record (missing image, missing field): reported, and the run goes on."""


class ImageError(RecordError):
    """An image that cannot be opened or rendered."""


def did_you_mean(word: str, choices) -> str:
    """A ' (did you mean X?)' hint for a mistyped name, or ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def renamed(old: str, new: str) -> None:
    """One line on stderr for an old spelling that still works, for one more release."""
    print(f"stmed: note: {old} is now {new}; the old spelling goes in the next release", file=sys.stderr)


@contextmanager
def loading_model(model: str):
    """What ``from_pretrained`` raises for a wrong id, a missing folder or a checkpoint that is not
    a vision-language model (OSError, ValueError), as the one line every command prints for it."""
    try:
        yield
    except ImportError as e:  # Qwen2-VL's video processor, for one, needs torchvision
        raise InputError(f"-m {model}: its processor needs a library that is missing here ({e}); for "
                         "torchvision, install the release built for your torch (torch 2.N pairs with torchvision 0.N+15)") from None
    except Exception as e:
        if damaged_file(e):
            raise InputError(f"-m {model}: a weights file is damaged or cut short ({type(e).__name__}: "
                             f"{str(e).strip()[:160]}); download it again (for a Hub model, delete its folder "
                             "from the Hugging Face cache)") from None
        if not isinstance(e, (OSError, ValueError)):
            raise
        lines = str(e).strip().splitlines()
        raise InputError(f"-m {model}: cannot load a vision-language model "
                         f"({lines[0] if lines else type(e).__name__})") from None


def damaged_file(e: Exception) -> bool:
    """A weights file that does not read whole: safetensors' error, or a torch file cut short."""
    import pickle

    return (type(e).__name__ == "SafetensorError" or isinstance(e, (pickle.UnpicklingError, EOFError))
            or (isinstance(e, RuntimeError) and "PytorchStreamReader" in str(e)))
