from collections import Counter
from pathlib import Path

import pytest
from conftest import colour_image, make_folder_dataset
from PIL import Image

from training.config import DataConfig
from training.data import FASHION_MNIST_CLASSES, find_fashion_mnist, key_loader, load_splits
from training.data.splits import DatasetError, Sample, stratified_split


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def test_folder_is_split_stratified_and_seeded(folder_dataset):
    a = load_splits(cfg(folder_dataset, val_fraction=0.25, test_fraction=0.25))
    b = load_splits(cfg(folder_dataset, val_fraction=0.25, test_fraction=0.25))
    assert a.classes == ["blue", "green", "red"]
    assert a.counts()["test"] == {"blue": 3, "green": 3, "red": 3}
    assert a.counts()["train"] == {"blue": 6, "green": 6, "red": 6}
    assert [s.key for s in a.test] == [s.key for s in b.test]
    assert a.split_origin == "generated"
    assert a.fingerprint() == b.fingerprint()


def test_split_record_lists_every_sample(folder_dataset):
    splits = load_splits(cfg(folder_dataset))
    record = splits.split_record()
    assert sum(len(record[k]) for k in ("train", "val", "test")) == 36


def test_train_val_test_subtrees_are_used_as_given(tmp_path):
    for k, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        make_folder_dataset(tmp_path / split, per_class=n, seed=100 * k)
    splits = load_splits(cfg(tmp_path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 9)
    assert splits.split_origin == "given" and not splits.skipped


def test_duplicates_across_splits_are_caught(tmp_path):
    make_folder_dataset(tmp_path / "train", per_class=6)
    make_folder_dataset(tmp_path / "test", per_class=2)  # same seeds: copies of training images
    splits = load_splits(cfg(tmp_path))
    assert len(splits.skipped) == 6 and all("duplicate of" in s.reason for s in splits.skipped)


def test_missing_val_subtree_is_carved_from_train(tmp_path):
    make_folder_dataset(tmp_path / "train", per_class=10)
    for name, rgb in {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}.items():
        (tmp_path / "test" / name).mkdir(parents=True)
        colour_image(rgb, seed=999).save(tmp_path / "test" / name / "t.png")
    splits = load_splits(cfg(tmp_path, val_fraction=0.2))
    assert len(splits.test) == 3 and len(splits.val) == 6 and len(splits.train) == 24
    assert splits.split_origin == "given+generated"


def test_bad_files_are_skipped_and_listed(folder_dataset: Path):
    red = folder_dataset / "red"
    (red / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (red / "000.png").read_bytes()
    (red / "truncated.png").write_bytes(good[: len(good) // 2])
    (red / "copy.png").write_bytes(good)
    (red / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(red / "tiny.png")
    splits = load_splits(cfg(folder_dataset, min_size=8))
    reasons = {Path(s.key).name: s.reason for s in splits.skipped}
    assert "corrupt" in reasons["broken.jpg"]
    assert "truncated" in reasons["truncated.png"]
    assert reasons["copy.png"].startswith("duplicate of") or reasons["000.png"].startswith("duplicate of")
    assert "unsupported file type .txt" in reasons["notes.txt"]
    assert "too small" in reasons["tiny.png"]
    assert sum(Counter(s.label for s in splits.train + splits.val + splits.test).values()) == 36


def test_csv_manifest_with_header_and_bad_rows(folder_dataset: Path):
    manifest = folder_dataset / "labels.csv"
    rows = ["path,label"]
    rows += [f"red/{i:03d}.png,warm" for i in range(12)]
    rows += [f"blue/{i:03d}.png,cold" for i in range(12)]
    rows += ["red/missing.png,warm", "green/000.png,", "green/001.png,purple"]
    manifest.write_text("\n".join(rows) + "\n")
    splits = load_splits(cfg(manifest, classes=["cold", "warm"]))
    assert splits.classes == ["cold", "warm"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 24
    reasons = " | ".join(s.reason for s in splits.skipped)
    assert "missing file" in reasons and "needs a path and a label" in reasons and "unknown label 'purple'" in reasons


def test_csv_without_header_with_split_column(folder_dataset: Path):
    manifest = folder_dataset / "m.csv"
    lines = [f"{c}/{i:03d}.png,{c},{'test' if i < 2 else 'train'}" for c in ("red", "blue") for i in range(8)]
    manifest.write_text("\n".join(lines))
    splits = load_splits(cfg(manifest))
    assert len(splits.test) == 4 and len(splits.val) > 0
    assert splits.split_origin == "given+generated"


@pytest.mark.parametrize(
    ("layout", "message"),
    [("empty", "Found 0 usable images"), ("one_class", "at least 2 classes"), ("no_train", "no training images")],
)
def test_untrainable_datasets_fail_with_what_was_found(tmp_path, layout, message):
    if layout == "one_class":
        make_folder_dataset(tmp_path, per_class=5)
        for name in ("green", "blue"):
            for f in (tmp_path / name).iterdir():
                f.unlink()
            (tmp_path / name).rmdir()
    elif layout == "no_train":
        make_folder_dataset(tmp_path / "train", per_class=3)
        for f in (tmp_path / "train" / "blue").iterdir():
            f.unlink()
        make_folder_dataset(tmp_path / "test", per_class=1, seed=50)
    with pytest.raises(DatasetError, match=message):
        load_splits(cfg(tmp_path))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(cfg(tmp_path / "nope"))


def test_stratified_split_keeps_a_training_sample_per_class():
    samples = [Sample(f"a{i}", 0) for i in range(100)] + [Sample("b0", 1), Sample("b1", 1)]
    train, val, test = stratified_split(samples, 0.2, 0.2, seed=3)
    assert Counter(s.label for s in test)[0] == 20 and Counter(s.label for s in val)[0] == 20
    assert any(s.label == 1 for s in train)
    assert len(train) + len(val) + len(test) == len(samples)
    assert stratified_split(samples, 0.2, 0.2, seed=3) == (train, val, test)


def test_limit_per_class_caps_each_split(folder_dataset):
    splits = load_splits(cfg(folder_dataset, limit_per_class=4))
    assert max(Counter(s.label for s in splits.train).values()) <= 4


def test_fashion_mnist_from_the_debian_package():
    try:
        find_fashion_mnist(None)
    except DatasetError as exc:
        pytest.skip(str(exc))
    splits = load_splits(DataConfig(source="fashion-mnist", val_fraction=0.1))
    assert splits.classes == FASHION_MNIST_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert set(splits.counts()["val"].values()) == {600}
    img = key_loader(splits.source, 1)(splits.test[0].key)
    assert img.size == (28, 28) and img.mode == "L"
    assert key_loader(splits.source, 3)(splits.test[0].key).mode == "RGB"


def test_missing_fashion_mnist_dir_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_splits(DataConfig(source="fashion-mnist", fashion_mnist_dir=str(tmp_path)))


def test_extra_train_folders_join_training_only_and_decode_label_names(folder_dataset, tmp_path):
    extra = tmp_path / "feedback"
    (extra / "red").mkdir(parents=True)
    (extra / "T-shirt%2Ftop").mkdir()
    colour_image((200, 30, 30), seed=9001).save(extra / "red" / "new.png")
    colour_image((90, 90, 90), seed=9002).save(extra / "T-shirt%2Ftop" / "a.png")
    (extra / "red" / "dup.png").write_bytes((folder_dataset / "blue" / "000.png").read_bytes())
    base = load_splits(DataConfig(source=str(folder_dataset)))
    splits = load_splits(DataConfig(source=str(folder_dataset), extra_train=[str(extra)]))
    assert splits.classes == ["blue", "green", "red", "T-shirt/top"]  # appended: old indices unchanged
    assert len(splits.train) == len(base.train) + 2
    assert any(s.key.endswith("dup.png") and "duplicate" in s.reason for s in splits.skipped)
    assert splits.val == base.val and splits.test == base.test


def test_the_evaluation_share_of_feedback_never_trains(folder_dataset, tmp_path):
    from training.data import in_evaluation_share

    extra = tmp_path / "feedback"
    (extra / "red").mkdir(parents=True)
    names = [f"{i * 0x0A000000:08x}{'0' * 24}.png" for i in range(25)]  # the first 32 bits spread over 0..1
    for i, name in enumerate(names):
        colour_image((200, 30 + i, 30), seed=9100 + i).save(extra / "red" / name)
    held = [n for n in names if in_evaluation_share(n, 0.2)]
    assert 3 <= len(held) <= 7 and not in_evaluation_share("not-a-hash.png", 0.99)
    splits = load_splits(DataConfig(source=str(folder_dataset), extra_train=[str(extra)], extra_eval_share=0.2))
    trained = {Path(s.key).name for s in splits.train if str(extra) in s.key}
    assert trained == set(names) - set(held)


def test_holdout_replaces_the_test_split_and_stays_out_of_training(folder_dataset, tmp_path):
    import json

    first = load_splits(DataConfig(source=str(folder_dataset), split_seed=1))
    record = first.split_record()
    (tmp_path / "split.json").write_text(json.dumps(record))
    other = load_splits(DataConfig(source=str(folder_dataset), split_seed=2, holdout=str(tmp_path / "split.json")))
    assert sorted(s.key for s in other.test) == sorted(s.key for s in first.test)
    held = {s.key for s in other.test}
    assert not held & {s.key for s in other.train + other.val}
    total = len(first.train) + len(first.val) + len(first.test)
    assert len(other.train) + len(other.val) + len(other.test) == total  # nothing lost
    assert "holdout" in other.split_origin
