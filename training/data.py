"""Find the images of a dataset folder, drop the unusable ones, and split them.

Layouts accepted:
- ``ROOT/train/<class>/...`` with ``ROOT/validation/<class>/...`` (or ``val/`` / ``valid/``), ``ROOT/test/<class>/...``,
  or both: a split not given is a seeded share, per class, of the validation split (test) or of train (validation);
- ``ROOT/<class>/...``: one folder, split into train, validation and test by seeded ratios.
Extra images (a folder of class sub-folders, e.g. the service's feedback folder) join the training split only,
so the validation and test figures stay comparable with a run without them; an extra image identical to one of
the dataset's is dropped (in validation or test it would leak).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from classifier.imaging import InputError, decode_image
from training.errors import TrainingError

logger = logging.getLogger(__name__)

VALIDATION_DIRS = ("validation", "val", "valid")
TEST_DIR = "test"
TRAINING_MAX_PIXELS = 100_000_000
_SCAN_DRAFT = 64  # a reduced-scale JPEG decode still reads the whole stream, so truncation shows
_IGNORED_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Splits:
    """A dataset ready for training: class names, three disjoint splits, what was skipped."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]
    skipped: tuple[tuple[Path, str], ...]
    fingerprint: str
    duplicates: tuple[tuple[Path, ...], ...] = ()
    extra: Extra | None = None  # images added to the training split (already in ``train``)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split, e.g. {"train": {"cats": 1000, ...}, ...}."""
        out = {}
        for split in ("train", "val", "test"):
            per_label = Counter(s.label for s in getattr(self, split))
            out[split] = {name: per_label.get(i, 0) for i, name in enumerate(self.class_names)}
        return out


@dataclass(frozen=True)
class Extra:
    """The extra training images: where from, how many per class, and how many were dropped as duplicates."""

    root: Path
    samples: tuple[Sample, ...]
    counts: dict[str, int]
    dropped: tuple[Path, ...]
    fingerprint: str  # SHA-256 over each kept image's path, label and content


def load_splits(
    root: Path,
    *,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    workers: int | None = None,
    extra: Path | None = None,
) -> Splits:
    """Discover, scan and split ``root``, adding ``extra``'s images to the training split. Raises TrainingError on
    a folder that cannot be used."""
    root = Path(root).expanduser()
    if not root.exists():
        raise TrainingError(f"data folder {root} does not exist; pass --data DIR with a folder of class sub-folders")
    if not root.is_dir():
        raise TrainingError(
            f"--data {root} is a file, not a folder of class sub-folders; if it is an archive, extract it and pass "
            "the folder"
        )
    layout, groups = _discover(root)
    class_names = tuple(sorted(groups["train"]))
    extra_root = Path(extra).expanduser() if extra is not None else None
    extra_classes = _extra_classes(extra_root, root, class_names) if extra_root is not None else None
    scanned = {split: _scan(split, by_class, class_names, workers) for split, by_class in groups.items()}
    skipped = tuple(item for result in scanned.values() for item in result[1])
    _warn_skipped(skipped)
    files = {split: result[0] for split, result in scanned.items()}
    duplicates = find_duplicates(files)
    if duplicates:
        shown = "; ".join(" = ".join(map(str, group)) for group in duplicates[:10])
        logger.warning(
            "%d group(s) of identical files (kept, but check for leakage or label noise): %s", len(duplicates), shown
        )
    fingerprint = _fingerprint(files, root)
    train = files["train"]
    if "val" in files:
        val = files["val"]
    else:
        train, val = _split(train, val_ratio, seed, "validation")
    if "test" in files:
        test = files["test"]
    else:
        val, test = _split(val, test_ratio, seed, "test")
    added = None
    if extra_root is not None and extra_classes is not None:
        added = _extra(extra_root, extra_classes, class_names, files, workers)
    if added is not None:
        train = sorted(train + [(s.path, s.label, "") for s in added.samples])
        fingerprint = hashlib.sha256(f"{fingerprint}\0{added.fingerprint}".encode()).hexdigest()
    splits = Splits(
        root=root,
        layout=layout,
        class_names=class_names,
        train=tuple(_samples(train)),
        val=tuple(_samples(val)),
        test=tuple(_samples(test)),
        skipped=skipped,
        fingerprint=fingerprint,
        duplicates=tuple(tuple(group) for group in duplicates),
        extra=added,
    )
    _check_nonempty(splits)
    return splits


def _extra_classes(folder: Path, root: Path, class_names: tuple[str, ...]) -> dict[str, Path]:
    """The extra folder's class sub-folders, checked before any image is read: the dataset's classes only."""
    if not folder.is_dir():
        raise TrainingError(f"--extra-data {folder} is not a folder; pass a folder of class sub-folders")
    if folder.resolve() == root.resolve() or folder.resolve().is_relative_to(root.resolve()):
        raise TrainingError(
            f"--extra-data {folder} is inside --data {root}: its images would land in every split; keep it apart"
        )
    by_class = _class_dirs(folder)
    foreign = sorted(set(by_class) - set(class_names))
    if foreign:
        raise TrainingError(
            f"--extra-data {folder} holds class(es) {', '.join(foreign)} that --data has not "
            f"({', '.join(class_names)}); rename or remove those sub-folders"
        )
    return by_class


def _extra(
    folder: Path,
    by_class: dict[str, Path],
    class_names: tuple[str, ...],
    files: dict[str, list[tuple[Path, int, str]]],
    workers: int | None,
) -> Extra:
    """Scan the extra folder's images; those identical to the dataset's are dropped."""
    scanned, skipped = _scan("extra", by_class, class_names, workers)
    _warn_skipped(tuple(skipped))
    known = {sha for items in files.values() for _, _, sha in items}
    kept = [item for item in scanned if item[2] not in known]
    dropped = tuple(sorted(path for path, _, sha in scanned if sha in known))
    if dropped:
        logger.warning(
            "dropped %d --extra-data image(s) identical to images of --data (in validation or test they would leak): "
            "%s",
            len(dropped),
            "; ".join(map(str, dropped[:10])),
        )
    if not kept:
        logger.warning("--extra-data %s adds no image to the training split", folder)
    per_class = Counter(label for _, label, _ in kept)
    return Extra(
        root=folder,
        samples=tuple(Sample(path, label) for path, label, _ in sorted(kept)),
        counts={name: per_class.get(i, 0) for i, name in enumerate(class_names)},
        dropped=dropped,
        fingerprint=_fingerprint({"extra": kept}, folder),
    )


def find_images(root: Path, workers: int | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every decodable image under ``root`` (any layout, sub-folders included) and the skipped files with why.
    Raises TrainingError when ``root`` is not a folder or holds no image."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TrainingError(f"{root} is not a folder; pass a folder of images")
    scanned, skipped = _scan(root.name, {"": root}, ("",), workers)
    if not scanned:
        raise TrainingError(f"{root} holds no image that can be decoded ({len(skipped)} files skipped)")
    return [path for path, _, _ in scanned], skipped


def _discover(root: Path) -> tuple[str, dict[str, dict[str, Path]]]:
    """The layout's name and each split folder's classes ({"train": {class: folder}, "val": ..., "test": ...})."""
    val_dir = next((root / d for d in VALIDATION_DIRS if (root / d).is_dir()), None)
    test_dir = root / TEST_DIR if (root / TEST_DIR).is_dir() else None
    if (root / "train").is_dir() and (val_dir is not None or test_dir is not None):
        groups = {"train": _class_dirs(root / "train")}
        named = {"val": val_dir, "test": test_dir}
        for split, folder in named.items():
            if folder is None:
                continue
            groups[split] = _class_dirs(folder)
            if not groups[split]:
                raise TrainingError(
                    f"{folder} has no class sub-folders (unlabelled images?): sort its images into sub-folders "
                    f"named like train/'s, or move it out of {root}"
                )
            if set(groups[split]) != set(groups["train"]):
                raise TrainingError(
                    f"train/ and {folder.name}/ in {root} hold different classes: "
                    f"{sorted(groups['train'])} vs {sorted(groups[split])}; make their sub-folders match"
                )
        layout = " + ".join(["train/", *(f"{folder.name}/" for folder in named.values() if folder is not None)])
    else:
        groups = {"train": _class_dirs(root)}
        layout = "single folder"
    if len(groups["train"]) < 2:
        found = ", ".join(sorted(groups["train"])) or "none"
        raise TrainingError(
            f"{root} must hold at least 2 class sub-folders (found {found}); expected "
            f"{root}/<class>/<image> or {root}/train/<class>/<image> with {root}/validation/<class>/<image>"
        )
    return layout, groups


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {
        p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    }


def _list_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _scan(
    split: str, by_class: dict[str, Path], class_names: tuple[str, ...], workers: int | None
) -> tuple[list[tuple[Path, int, str]], list[tuple[Path, str]]]:
    """Decode every file once; return (path, label, sha256) of the good ones and the skipped ones."""
    jobs = [
        (path, class_names.index(name)) for name, folder in sorted(by_class.items()) for path in _list_files(folder)
    ]
    good: list[tuple[Path, int, str]] = []
    bad: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda job: (job, _check_file(job[0])), jobs)
        for (path, label), (digest, problem) in tqdm(results, total=len(jobs), desc=f"scan {split}", unit="img"):
            if problem is None:
                good.append((path, label, digest))
            else:
                bad.append((path, problem))
    return good, bad


def _check_file(path: Path) -> tuple[str, str | None]:
    """(content SHA-256, None) for a decodable image, else ("", why it is unusable)."""
    try:
        data = path.read_bytes()
        decode_image(data, max_pixels=TRAINING_MAX_PIXELS, draft_size=_SCAN_DRAFT)
    except InputError as exc:
        return "", exc.message
    except OSError as exc:
        return "", f"unreadable ({exc.strerror or exc})"
    return hashlib.sha256(data).hexdigest(), None


def find_duplicates(files: dict[str, list[tuple[Path, int, str]]]) -> list[list[Path]]:
    """Groups of byte-identical files: across splits they leak test data, across classes they are label noise."""
    by_hash: dict[str, list[Path]] = {}
    for items in files.values():
        for path, _, sha in items:
            by_hash.setdefault(sha, []).append(path)
    return [sorted(paths) for paths in by_hash.values() if len(paths) > 1]


def _warn_skipped(skipped: tuple[tuple[Path, str], ...]) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{path} ({why})" for path, why in skipped[:20])
    more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    logger.warning("skipped %d file(s) that are not usable images: %s%s", len(skipped), shown, more)


def _fingerprint(files: dict[str, list[tuple[Path, int, str]]], root: Path) -> str:
    """SHA-256 over every usable file's split, relative path and content hash."""
    digest = hashlib.sha256()
    for split in sorted(files):
        for path, label, sha in sorted(files[split]):
            # surrogateescape: a name that is not UTF-8 (an archive from an older system) hashes as its bytes
            name = path.relative_to(root).as_posix().encode(errors="surrogateescape")
            digest.update(f"{split}\0".encode() + name + f"\0{label}\0{sha}\n".encode())
    return digest.hexdigest()


def _split(items: list[tuple[Path, int, str]], ratio: float, seed: int, what: str):
    """Move a seeded ``ratio`` of each class from ``items`` into a new split (stratified)."""
    if not 0.0 < ratio < 1.0:
        raise TrainingError(f"the {what} ratio must be between 0 and 1 (exclusive), got {ratio}")
    kept, taken = [], []
    for label in sorted({label for _, label, _ in items}):
        group = sorted(item for item in items if item[1] == label)
        random.Random(f"{seed}:{what}:{label}").shuffle(group)
        n_taken = max(1, round(len(group) * ratio)) if len(group) > 1 else 0
        taken += group[:n_taken]
        kept += group[n_taken:]
    return sorted(kept), sorted(taken)


def _samples(items: list[tuple[Path, int, str]]) -> list[Sample]:
    return [Sample(path, label) for path, label, _ in items]


def _check_nonempty(splits: Splits) -> None:
    counts = splits.counts()
    none_at_all = [name for name in splits.class_names if not any(per_class[name] for per_class in counts.values())]
    if none_at_all:
        raise TrainingError(
            f"the class folder(s) {', '.join(none_at_all)} in {splits.root} hold no usable image: "
            "add images or remove the folder(s)"
        )
    from_folder = {"train": True, "val": "val" in splits.layout, "test": f"{TEST_DIR}/" in splits.layout}
    for split, per_class in counts.items():
        empty = [name for name, n in per_class.items() if n == 0]
        if empty:
            fix = (
                "add images to its folder" if from_folder[split] else "add images, or change --val-ratio / --test-ratio"
            )
            raise TrainingError(
                f"the {split} split has no usable images of class(es) {', '.join(empty)} in {splits.root}; "
                f"every class needs at least one image in each of train, validation and test: {fix}"
            )
