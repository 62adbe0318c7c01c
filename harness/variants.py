"""New stored versions made from a stored model, whose behaviour is known by construction: an exact copy (agrees
on every image), a copy with its classifier's rows rotated (names another class on every image), or a wider
network of the same input and classes (many times slower; untrained). Tests, load tests and the soak use them
to put a good, a disagreeing and a slow challenger through a rollout."""

from __future__ import annotations

import torch

from training import store
from training.models import build_model


def variant(tag: str, rotate: int = 0, width: int | None = None) -> str:
    """A new version of ``tag``'s model name: the same weights with the classifier's rows rotated by ``rotate``,
    or (``width``) an untrained scratch CNN that wide. Returns its tag."""
    stored = store.load_model(tag)
    meta = stored.metadata
    kwargs = dict(meta["model_kwargs"])
    model = stored.model
    if width is not None:
        kwargs["width"] = width
        model = build_model(meta["architecture"], **kwargs).eval()
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(rotate, dims=0))
        head.bias.copy_(head.bias.roll(rotate, dims=0))
    saved = store.save_model(tag.split(":")[0], model, architecture=meta["architecture"], model_kwargs=kwargs,
                             classes=stored.classes, preprocessing=stored.preprocessing, metrics=meta["metrics"],
                             config=meta["config"], fingerprint=meta["dataset_fingerprint"],
                             split=stored.split())  # fmt: skip
    return str(saved.tag)


def discard(*tags: str) -> None:
    """Delete variants from the store when a test is done with them: another test serving the newest version of
    the same name must not find them."""
    import contextlib

    import bentoml

    for tag in tags:
        with contextlib.suppress(Exception):  # gone already
            bentoml.models.delete(tag)
