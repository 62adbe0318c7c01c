import torch
from conftest import make_folder_dataset

from training.config import AugmentConfig, DataConfig
from training.data import key_loader, load_splits
from training.fastpath import TensorBatchLoader, decode_all, pad_crop, random_erase, supports
from training.transforms import Preprocessing, build_eval_transform, resolve_augment

PP = Preprocessing(input_size=24, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))


def test_supports_only_batchable_augmentations():
    assert supports(resolve_augment(AugmentConfig(preset="none")), 100, PP)
    assert supports(resolve_augment(AugmentConfig(preset="light", crop_padding=2, random_erasing=0.2)), 100, PP)
    assert not supports(resolve_augment(AugmentConfig(preset="light")), 100, PP)  # random-resized crop
    assert not supports(resolve_augment(AugmentConfig(preset="medium", crop_padding=2)), 100, PP)  # trivialaugment
    assert not supports({}, 10**9, PP)  # too big for memory


def test_eval_batches_equal_the_eval_transform(tmp_path):
    root = make_folder_dataset(tmp_path / "d", per_class=4, size=40)
    splits = load_splits(DataConfig(source=str(root)))
    load = key_loader(splits.source, 3)
    samples = splits.train
    images = decode_all(samples, load, PP)
    loader = TensorBatchLoader(images, torch.tensor([s.label for s in samples]), PP, 4, train=False)
    x, y = next(iter(loader))
    tf = build_eval_transform(PP)
    expected = torch.stack([tf(load(s.key)) for s in samples[:4]])
    assert torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == [s.label for s in samples[:4]]
    assert len(loader) == -(-len(samples) // 4)


def test_train_batches_are_shuffled_per_epoch_and_sharded():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 8, 8).contiguous()
    pp = Preprocessing(input_size=8, channels=1, mean=(0.0,), std=(1 / 255,))
    labels = torch.arange(20)
    ranks = [TensorBatchLoader(images, labels, pp, 5, train=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([y for _, y in loader]) for loader in ranks]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0 and len(seen[0]) == 10
    first = seen[0].tolist()
    ranks[0].set_epoch(1)
    assert torch.cat([y for _, y in ranks[0]]).tolist() != first


def test_pad_crop_shifts_and_erase_zeroes():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(64, 1, 8, 8)
    shifted = pad_crop(x, 2, g)
    assert shifted.shape == x.shape and (shifted == 0).any() and (shifted == 1).any()
    erased = random_erase(torch.ones(16, 3, 8, 8), 1.0, g)
    assert all((img == 0).any() for img in erased)
