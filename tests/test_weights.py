"""Key mapping of packaged ImageNet weights onto timm, on synthetic state dicts (no weight files)."""

import pytest
import timm
import torch

from training.weights import (
    WeightsError,
    convert_efficientnet_lite,
    convert_mobilenetv2,
    import_weights,
    strict_load,
)


def _lukemelas_state(model) -> dict[str, torch.Tensor]:
    """A lukemelas-style EfficientNet-Lite state dict with the shapes of ``model``, random values."""
    sd = model.state_dict()
    out = {}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    n = 0
    for s, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            expanded = hasattr(block, "conv_pwl")
            names = (
                {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                 "conv_pwl": "_project_conv", "bn3": "_bn2"}
                if expanded else
                {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
            )  # fmt: skip
            for key, value in sd.items():
                prefix = f"blocks.{s}.{j}."
                if key.startswith(prefix):
                    sub, param = key[len(prefix) :].split(".", 1)
                    out[f"_blocks.{n}.{names[sub]}.{param}"] = torch.randn_like(value.float()).to(value.dtype)
            n += 1
    for key, value in sd.items():
        head, param = key.split(".", 1)
        if head in top:
            out[f"{top[head]}.{param}"] = torch.randn_like(value.float()).to(value.dtype)
    return out


def test_lite_key_mapping_examples():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    src = _lukemelas_state(model)
    mapped = convert_efficientnet_lite(src, model)
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], src["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], src["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.2.0.bn3.running_mean"], src["_blocks.3._bn2.running_mean"])
    assert torch.equal(mapped["bn2.weight"], src["_bn1.weight"])
    strict_load(model, mapped, progress=False)
    assert torch.equal(model.state_dict()["classifier.weight"], src["_fc.weight"])


def test_mobilenetv2_key_mapping():
    model = timm.create_model("mobilenetv2_050", num_classes=5)
    tv = {}
    sd = model.state_dict()
    blocks = [b for stage in model.blocks for b in stage]
    flat = [(f"blocks.{s}.{j}.", b) for s, st in enumerate(model.blocks) for j, b in enumerate(st)]
    for i, (prefix, block) in enumerate(flat, start=1):
        names = ({"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1",
                  "conv_pwl": "conv.2", "bn3": "conv.3"} if hasattr(block, "conv_pwl") else
                 {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"})  # fmt: skip
        for key, value in sd.items():
            if key.startswith(prefix):
                sub, param = key[len(prefix) :].split(".", 1)
                tv[f"features.{i}.{names[sub]}.{param}"] = value.clone()
    last = len(blocks) + 1
    for ours, theirs in (("conv_stem", "features.0.0"), ("bn1", "features.0.1"), ("conv_head", f"features.{last}.0"),
                         ("bn2", f"features.{last}.1"), ("classifier", "classifier.1")):  # fmt: skip
        for key, value in sd.items():
            if key.startswith(ours + "."):
                tv[theirs + key[len(ours) :]] = value.clone()
    strict_load(model, convert_mobilenetv2(tv, model), progress=False)


def test_missing_and_unexpected_keys_are_refused():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    src = _lukemelas_state(model)
    del src["_blocks.2._bn0.weight"]
    with pytest.raises(WeightsError, match="1 missing"):
        strict_load(model, convert_efficientnet_lite(src, model), progress=False)
    with pytest.raises(WeightsError, match="unexpected key"):
        convert_efficientnet_lite({"_stem_that_does_not_exist.weight": torch.zeros(1)}, model)


def test_wrong_shape_is_refused():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    mapped = convert_efficientnet_lite(_lukemelas_state(model), model)
    mapped["classifier.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match="1 mis-shaped"):
        strict_load(model, mapped, progress=False)


@pytest.mark.weights
@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_packaged_imagenet_weights_classify_real_photos(arch):
    pytest.importorskip("skimage")
    from PIL import Image
    from skimage import data
    from timm.data import ImageNetInfo

    from training.transforms import build_eval_transform
    from training.weights import WeightsError, imported_preprocessing

    try:
        model = import_weights(arch, progress=False)
    except WeightsError as exc:
        pytest.skip(str(exc))
    tf = build_eval_transform(imported_preprocessing(arch, model))
    info = ImageNetInfo()
    with torch.inference_mode():
        cat = info.index_to_description(int(model(tf(Image.fromarray(data.chelsea()))[None]).argmax()))
        coffee = info.index_to_description(int(model(tf(Image.fromarray(data.coffee()))[None]).argmax()))
    assert "cat" in cat
    assert coffee in ("espresso", "cup")
