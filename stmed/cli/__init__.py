"""The ``stmed`` command line: one short function per command, each delegating to library code.

Heavy libraries (torch, transformers, trl, peft) are imported inside the commands that use
them, so ``stmed --help`` and ``stmed eval --predictions`` start instantly.
"""

from stmed.cli.app import app
from stmed.cli import generate, inspect  # noqa: F401  (each module registers its commands)
from stmed.cli import evaluate  # noqa: F401
from stmed.cli import judge  # noqa: F401
from stmed.cli import train  # noqa: F401
from stmed.cli import view  # noqa: F401
from stmed.cli import convert  # noqa: F401
from stmed.cli import experiments  # noqa: F401


def main() -> None:
    app()
