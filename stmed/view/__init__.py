"""``stmed view``: one self-contained HTML page to read what self-training generated.

Questions, answers, judge verdicts, skips, failures and eval items, joined into one card per
image, plus training curves; see docs/view.md. Nothing here imports torch or transformers.
"""

from stmed.view.page import ViewConfig, build_page, write_page

__all__ = ["ViewConfig", "build_page", "write_page"]
