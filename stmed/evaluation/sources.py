"""Where a benchmark comes from when ``--data`` is not given (``stmed eval --bench NAME``).

VQA-RAD and SLAKE (English) are carried in the project under ``examples/data/``. PathVQA is
not (its images have unclear redistribution terms): it is downloaded from the Hugging Face Hub
with ``huggingface_hub`` into the usual Hub cache (``HF_HOME``/``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1``
reads only that cache). A Hub copy's files are hashed; a pinned hash that differs stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stmed.errors import InputError

# The project's own copies (present in a clone and an editable install).
BUNDLED_ROOT = Path(__file__).resolve().parents[2] / "examples" / "data"
BUNDLED = {
    "vqa-rad": "vqa_rad/VQA_RAD Dataset Public.json",  # the public release, train and test
    "slake": "slake/test.json",  # the test split's English rows and their images
}
BUNDLED_LANGS = {"slake": ("en",)}


@dataclass(frozen=True)
class HubCopy:
    repo_id: str
    revision: str | None  # a commit; None = the branch head, recorded as resolved (see docs/eval.md)
    pattern: str  # the split's files inside the repository, {split} filled in
    rows: int  # rows in the copy's test split, so a count check can name the copy
    sha256: dict[str, str] = field(default_factory=dict)  # known file hashes, checked
    note: str = ""


HUB: dict[str, HubCopy] = {
    # flaviagiammarino/vqa-rad: the MEVF copy of the release as parquet (image, question, answer);
    # commit bcf91e7 (2023-06-03) is the last; its test file's LFS sha256 is the Hub's own.
    "vqa-rad": HubCopy(
        "flaviagiammarino/vqa-rad", "bcf91e7654fb9d51c8ab6a5b82cacf3fafd2fae9", "data/{split}-*.parquet", 451,
        {"data/test-00000-of-00001-e5bc3d208bb4deeb.parquet":
         "eb520bdab1116dd4f420120da19049d2315389fa126d031f65ec42e153264ea7"}),
    # flaviagiammarino/path-vqa: the common mirror. Its test split has 6,719 rows (the official
    # test has 6,761) in three shards that were re-uploaded several times on 2023-06-02/03; the
    # final commit could not be confirmed here, so the head is used and its commit recorded.
    "pathvqa": HubCopy(
        "flaviagiammarino/path-vqa", None, "data/{split}-*.parquet", 6719,
        note="the Hugging Face mirror's test split: 6,719 rows (the official test has 6,761)"),
}


@dataclass
class Source:
    """What ``--bench NAME`` without ``--data`` resolved to; recorded in the summary."""

    kind: str  # "bundled" | "hub"
    path: Path  # the file (or first shard) to load
    repo_id: str | None = None
    revision: str | None = None  # the commit the files came from
    files: dict[str, str] = field(default_factory=dict)  # repo path -> sha256
    note: str = ""
    sha256: str | None = None  # of ``path``, when already computed (a Hub file is hashed on arrival)

    def describe(self) -> dict:
        out = {"kind": self.kind}
        if self.kind == "bundled":
            out["path"] = str(self.path.relative_to(BUNDLED_ROOT.parent.parent))
        else:
            out.update(repo_id=self.repo_id, revision=self.revision, files=self.files)
        return out


def resolve(bench: str, split: str, lang: str) -> Source:
    """The bundled copy when there is one for this split and language, else the Hub copy."""
    rel = BUNDLED.get(bench)
    if rel and (BUNDLED_ROOT / rel).is_file() and lang in BUNDLED_LANGS.get(bench, (lang,)):
        return Source("bundled", BUNDLED_ROOT / rel)
    if bench in HUB:
        return download(HUB[bench], split)
    if rel and lang not in BUNDLED_LANGS.get(bench, (lang,)):
        raise InputError(f"--bench {bench} --lang {lang}: the bundled copy holds only "
                         f"{', '.join(BUNDLED_LANGS[bench])} questions; pass --data with the full release")
    raise InputError(f"--bench {bench}: no bundled or downloadable copy; pass --data FILE")


def download(copy: HubCopy, split: str) -> Source:
    """The split's files from the Hub cache, downloading them first when allowed; hashed."""
    pattern = copy.pattern.format(split=split)
    folder = _snapshot(copy, pattern)
    files = sorted(folder.glob(pattern))
    if not files:
        raise InputError(f"{copy.repo_id}@{folder.name}: no files match {pattern} (is --split {split!r} one of its splits?)")
    from stmed.records import file_sha256

    hashes = {}
    for f in files:
        rel = f.relative_to(folder).as_posix()
        hashes[rel] = file_sha256(f)
        want = copy.sha256.get(rel)
        if want and hashes[rel] != want:
            raise InputError(f"{f}: sha256 {hashes[rel]} differs from the pinned {want}; delete it to download again")
    first = files[0].relative_to(folder).as_posix()
    return Source("hub", files[0], copy.repo_id, folder.name, hashes, copy.note, hashes[first])


def _snapshot(copy: HubCopy, pattern: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    where = f"{copy.repo_id}@{copy.revision or 'main'}"
    kwargs = dict(repo_type="dataset", revision=copy.revision, allow_patterns=[pattern])
    try:  # the cache first: a copy already here needs no network at all
        cached = Path(snapshot_download(copy.repo_id, local_files_only=True, **kwargs))
        if any(cached.glob(pattern)):  # (a snapshot folder can hold other files of the repo only)
            return cached
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"--bench: {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         "HF_HUB_OFFLINE is set; download it once online, or pass --data FILE")
    old = hub_logging.get_verbosity()  # the download shows huggingface_hub's own progress bars
    hub_logging.set_verbosity_error()  # its retry warnings would bury the one line that matters
    try:
        return Path(snapshot_download(copy.repo_id, **kwargs))
    except Exception as e:  # no network, DNS, 404, gated: all end the same way for the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(f"--bench: cannot download {where} ({type(e).__name__}: {reason}); "
                         "check the network, or pass --data FILE") from None
    finally:
        hub_logging.set_verbosity(old)
