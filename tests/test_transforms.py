import torch
from PIL import Image

from training.config import AugmentConfig
from training.transforms import Preprocessing, build_eval_transform, build_train_transform, resolve_augment


def test_eval_transform_resizes_crops_and_normalises():
    pp = Preprocessing(input_size=32, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    x = build_eval_transform(pp)(Image.new("RGB", (80, 50), (255, 255, 255)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))
    assert pp.resize_size == 36


def test_grayscale_model_input():
    pp = Preprocessing(input_size=28, channels=1, mean=(0.0,), std=(1.0,))
    assert build_eval_transform(pp)(Image.new("L", (28, 28), 0)).shape == (1, 28, 28)


def test_presets_and_overrides():
    assert resolve_augment(AugmentConfig(preset="none")) == {}
    strong = resolve_augment(AugmentConfig(preset="strong", mixup=0.0))
    assert strong["mixup"] == 0.0 and strong["cutmix"] == 1.0
    pp = Preprocessing(input_size=24)
    for preset in ("none", "light", "medium", "strong"):
        tf = build_train_transform(pp, AugmentConfig(preset=preset, rotation=10, blur=0.5, noise=0.05))
        assert tf(Image.new("RGB", (40, 30))).shape == (3, 24, 24)
        tf = build_train_transform(pp, AugmentConfig(preset=preset, crop_padding=2))
        assert tf(Image.new("RGB", (40, 30))).shape == (3, 24, 24)


def test_fast_eval_preprocessor_matches_the_torchvision_transform():
    """Within one 8-bit level everywhere (the crop folded into the resample rounds in fixed point from other
    coordinates), exact where no resample is needed, and on a real photo all but a few pixels exact."""
    import numpy as np
    from skimage import data

    from training.transforms import EvalPreprocessor

    rng = np.random.default_rng(0)
    noise = [
        (Preprocessing(input_size=32, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3), "RGB",
         (97, 61)),
        (Preprocessing(input_size=28, channels=1, mean=(0.28,), std=(0.35,)), "L", (28, 28)),
        (Preprocessing(input_size=24, channels=1, mean=(0.28,), std=(0.35,)), "L", (50, 70)),
        (Preprocessing(input_size=40, crop_pct=0.9, interpolation="bilinear"), "RGB", (40, 300)),
        (Preprocessing(input_size=36, crop_pct=0.9), "RGB", (40, 60)),  # already at the resize size: a crop
    ]  # fmt: skip
    cases = [(pp, Image.fromarray(rng.integers(0, 255, (h, w, 3 if mode == "RGB" else 1), np.uint8).squeeze(), mode))
             for pp, mode, (w, h) in noise]  # fmt: skip
    photo_pp = Preprocessing(input_size=224, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    photo = Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC)
    for pp, img in [*cases, (photo_pp, photo)]:
        expected = build_eval_transform(pp)(img).numpy()
        got = EvalPreprocessor(pp)(img)
        assert got.shape == expected.shape and got.dtype == np.float32 and got.flags.c_contiguous
        level = 1 / (255 * min(pp.std))
        np.testing.assert_allclose(got, expected, atol=level + 1e-4)
        if img.size == (pp.input_size,) * 2 or img.size[0] == pp.resize_size:
            np.testing.assert_allclose(got, expected, atol=1e-4)
    off = np.abs(EvalPreprocessor(photo_pp)(photo) - build_eval_transform(photo_pp)(photo).numpy()) > 1e-4
    assert off.mean() < 0.001
