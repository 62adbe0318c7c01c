"""Know the data before training on it: its labels, its near-duplicates across splits, its outliers.

**Labels.** Out-of-sample class probabilities (from the current champion, which never trained on a retrain's
new images; or any stored model) are compared with the given labels by ``cleanlab`` (Northcutt et al.,
"Confident Learning", 2021): an image whose given label the model finds improbable, given how often each pair
of classes is confused, is a suspect, ranked by the model's confidence in the given label.

**Near-duplicates across splits** (a training image that is nearly a validation or test image inflates every
score measured there): grey 32 x 32 thumbnails, mean-centred and normalised, averaged down to 8 x 8 to propose
pairs (cosine similarity >= 0.98), confirmed at 32 x 32 at >= :data:`DUPLICATE_SIMILARITY`. Exact copies (same bytes)
are already dropped by the readers.

**Outliers**: in the model's penultimate-layer embedding (L2-normalised), each audited image's mean distance
to its 10 nearest neighbours among (up to 5,000) others; beyond Tukey's far-out fence (Q3 + 3 IQR) it is an
outlier, an image unlike the rest of its data (a wrong file, an empty frame, another domain).

Everything goes to ``audit.json`` with pictures of the worst (``audit.png``); the label suspects are either
excluded from training (``data.exclude``) or only reported; duplicates and outliers are reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.recorded import key_loader, recorded_samples
from .data.splits import DataSplits, Sample

log = logging.getLogger(__name__)

DUPLICATE_SIMILARITY = 0.995
COARSE_SIMILARITY = 0.98


@dataclass(frozen=True)
class Suspect:
    key: str
    given: str
    suggested: str  # the model's top class
    given_confidence: float  # the model's probability of the given label


@dataclass(frozen=True)
class NearDuplicate:
    key: str  # the audited (training) image
    other: str  # its near twin
    split: str  # the twin's split: val or test
    similarity: float


@dataclass(frozen=True)
class Outlier:
    key: str
    label: str
    distance: float  # mean distance to its nearest neighbours in the model's embedding
    fence: float  # the distance beyond which an image is an outlier, in this data


def thumbnails(keys: list[str], load: Any, size: int = 32) -> np.ndarray:
    """(N, size * size) grey thumbnails, mean-centred and L2-normalised (a flat image: zeros)."""
    from PIL import Image

    out = np.zeros((len(keys), size * size), np.float32)
    for i, key in enumerate(keys):
        with load(key) as img:
            out[i] = np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), np.float32).ravel()
    return _centred(out)


def _centred(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-6, x / np.maximum(norm, 1e-6), 0).astype(np.float32)


def _coarse(fine: np.ndarray) -> np.ndarray:
    """32 x 32 thumbnails averaged down to 8 x 8, centred and normalised again."""
    return _centred(fine.reshape(-1, 8, 4, 8, 4).mean((2, 4)).reshape(len(fine), 64))


def find_near_duplicates(keys: list[str], others: list[tuple[str, str]], load: Any, chunk: int = 2048,
                         threshold: float = DUPLICATE_SIMILARITY) -> list[NearDuplicate]:  # fmt: skip
    """Images of ``keys`` nearly identical to one of ``others`` ((key, split) pairs), most similar first.

    Each image is decoded once; 8 x 8 thumbnails propose pairs and the 32 x 32 ones confirm them (in bounded
    blocks of pairs: a dataset of similar images proposes millions)."""
    if not keys or not others:
        return []
    fine_mine, fine_other = thumbnails(keys, load), thumbnails([k for k, _ in others], load)
    coarse_other = _coarse(fine_other)
    found: list[NearDuplicate] = []
    for start in range(0, len(keys), chunk):
        rows, cols = np.nonzero(_coarse(fine_mine[start : start + chunk]) @ coarse_other.T >= COARSE_SIMILARITY)
        rows += start
        for i in range(0, len(rows), 16384):
            r, c = rows[i : i + 16384], cols[i : i + 16384]
            similarity = (fine_mine[r] * fine_other[c]).sum(1)
            keep = np.nonzero(similarity >= threshold)[0]
            found += [NearDuplicate(keys[r[k]], others[c[k]][0], others[c[k]][1], round(float(similarity[k]), 5))
                      for k in keep]  # fmt: skip
    return sorted(found, key=lambda d: -d.similarity)


def find_outliers(embeddings: np.ndarray, keys: list[str], labels: list[str], k: int = 10, reference: int = 5000,
                  seed: int = 0) -> list[Outlier]:  # fmt: skip
    """Images far from their nearest neighbours in the embedding, farthest first (see the module's docstring)."""
    n = len(embeddings)
    if n <= 2 * k:
        return []
    z = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    ref_idx = np.random.default_rng(seed).choice(n, min(reference, n), replace=False)
    ref = z[ref_idx]
    distances = np.empty(n, np.float32)
    for start in range(0, n, 4096):
        block = z[start : start + 4096]
        d = np.sqrt(np.maximum(2 - 2 * block @ ref.T, 0))
        own = np.nonzero((ref_idx >= start) & (ref_idx < start + len(block)))[0]
        d[ref_idx[own] - start, own] = np.inf  # not its own neighbour
        distances[start : start + len(block)] = np.sort(np.partition(d, k, axis=1)[:, :k], axis=1).mean(1)
    q1, q3 = np.percentile(distances, [25, 75])
    fence = float(q3 + 3 * (q3 - q1))
    far = np.argsort(-distances)
    return [Outlier(keys[i], labels[i], round(float(distances[i]), 5), round(fence, 5)) for i in far
            if distances[i] > fence]  # fmt: skip


def find_suspects(probs: np.ndarray, labels: np.ndarray, keys: list[str], classes: list[str]) -> list[Suspect]:
    """The images whose label is probably wrong, worst first (``probs``: out-of-sample, (N, C))."""
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(labels) < 2 * len(classes) or len(present) < 2:
        return []  # too few images to estimate how classes are confused
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [Suspect(keys[i], classes[labels[i]], classes[int(probs[i].argmax())], round(float(probs[i, labels[i]]), 6))
            for i in ranked]  # fmt: skip


def audit_samples(stored: Any, samples: list[Sample], load: Any) -> tuple[list[Suspect], list[Outlier]]:
    """Label suspects and outliers among ``samples`` (labels in ``stored``'s classes) as ``stored`` sees them:
    one label an image (multi-class and hierarchical models; a multi-label model's are not audited)."""
    from .evaluate import predict_samples
    from .tasks import TaskSpec

    single = [s for s in samples if isinstance(s.label, int)]
    if not single or TaskSpec.from_metadata(stored.metadata).multilabel:
        return [], []
    embeddings: list[np.ndarray] = []
    probs, targets = predict_samples(stored, single, load, embeddings=embeddings)
    keys, classes = [s.key for s in single], list(stored.classes)
    outliers = find_outliers(np.concatenate(embeddings), keys, [classes[s.label] for s in single])
    return find_suspects(probs, np.asarray(targets, int), keys, classes), outliers


@dataclass
class Audit:
    suspects: list[Suspect]
    samples: list[Sample]  # what was audited: the split's images with labels in the model's classes
    load: Any  # key -> image, for the pictures
    flipped: set[str]  # keys whose label was flipped on purpose (a measurement), else empty
    duplicates: list[NearDuplicate] = field(default_factory=list)  # audited images nearly in another split
    outliers: list[Outlier] = field(default_factory=list)


def audit_split(stored: Any, splits: DataSplits, split: str = "train", flip: float = 0.0, seed: int = 0) -> Audit:
    """Audit one split of ``splits`` with ``stored`` (labels matched to its classes by name); with ``flip``, that
    fraction of the labels is changed first, to measure the audit."""
    samples = recorded_samples(splits.split_record(), split, list(stored.classes))
    flipped: set[str] = set()
    if flip:
        samples, flipped = flip_labels(samples, len(stored.classes), flip, seed)
    load = key_loader(splits.source, stored.preprocessing.channels)
    suspects, outliers = audit_samples(stored, samples, load)
    others = [(s.key, name) for name in ("train", "val", "test") if name != split for s in getattr(splits, name)]
    duplicates = find_near_duplicates([s.key for s in samples], others, load)
    return Audit(suspects, samples, load, flipped, duplicates, outliers)


def summary(audit: Audit, excluded: bool) -> dict:
    return {"audited": len(audit.samples), "suspects": len(audit.suspects), "excluded": excluded,
            "near_duplicates": len(audit.duplicates), "outliers": len(audit.outliers),
            "method": "labels: confident learning (cleanlab) on the champion's probabilities; near-duplicates: "
                      f"thumbnail cosine >= {DUPLICATE_SIMILARITY}; outliers: k-NN distance in the champion's "
                      "embedding beyond Q3 + 3 IQR"}  # fmt: skip


def write(audit: Audit, out_dir: Path, excluded: bool, show: int = 16) -> dict:
    """``audit.json`` (every finding) and ``audit.png`` (the worst ``show`` of each kind); returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = summary(audit, excluded)
    (out_dir / "audit.json").write_text(json.dumps({**out, "items": [asdict(s) for s in audit.suspects],
                                                    "near_duplicate_items": [asdict(d) for d in audit.duplicates],
                                                    "outlier_items": [asdict(o) for o in audit.outliers]},
                                                   indent=2))  # fmt: skip
    if audit.suspects or audit.duplicates or audit.outliers:
        from . import report

        report.plot_audit(audit.suspects[:show], audit.duplicates[: show // 2], audit.outliers[: show // 2],
                          audit.load, out_dir / "audit.png")  # fmt: skip
    return out


def flip_labels(samples: list[Sample], num_classes: int, fraction: float, seed: int = 0) -> tuple[list[Sample], set]:
    """``fraction`` of the labels changed to another class at random (to measure the audit); the keys flipped."""
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(samples), int(round(fraction * len(samples))), replace=False).tolist())
    out = []
    for i, s in enumerate(samples):
        if i in chosen:
            other = int((s.label + rng.integers(1, num_classes)) % num_classes)
            out.append(Sample(s.key, other, s.digest))
        else:
            out.append(s)
    return out, {samples[i].key for i in chosen}
