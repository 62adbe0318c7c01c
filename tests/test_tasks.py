"""Multi-label and hierarchical classification: the pure parts (trees, thresholds, metrics, data, answers, gate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_folder_dataset, make_multilabel_dataset, make_tree_dataset

from service.errors import InvalidInput
from service.inference.answers import ClassifyQuery, answer, check_query
from service.retraining import gate
from training.config import DataConfig
from training.data import load_splits
from training.data.splits import DatasetError
from training.metrics import hierarchy_metrics, multilabel_metrics, tune_thresholds
from training.tasks import TaskSpec
from training.taxonomy import Taxonomy, TaxonomyError

TREE = Taxonomy.from_obj({"clothing": {"upper": ["shirt", "t-shirt"], "lower": ["trousers"]}, "bag": None})
LEAVES = ["shirt", "t-shirt", "trousers", "bag"]


# ---------------------------------------------------------------- taxonomy
def test_taxonomy_from_a_nested_tree_a_parent_map_and_folder_paths():
    assert TREE.path("t-shirt") == ["clothing", "upper", "t-shirt"]
    assert sorted(TREE.leaves) == sorted(LEAVES)
    flat = Taxonomy.from_obj({"shirt": "upper", "upper": "clothing", "clothing": None})
    assert flat.path("shirt") == ["clothing", "upper", "shirt"]
    paths = Taxonomy.from_paths(["animal/cat", "animal/dog", "plant"])
    assert paths.path("animal/cat") == ["animal", "animal/cat"] and paths.depth("plant") == 1


def test_taxonomy_levels_sum_leaves_and_pad_shallow_leaves():
    nodes, m = TREE.level_matrix(LEAVES, 1)
    assert nodes == ["clothing", "bag"]
    probs = np.array([[0.1, 0.2, 0.3, 0.4]])
    assert np.allclose(probs @ m, [[0.6, 0.4]])
    nodes2, m2 = TREE.level_matrix(LEAVES, 2)
    assert nodes2 == ["upper", "lower", "bag"]  # bag is a leaf at depth 1: it stands for itself below
    assert np.allclose((probs @ m2).sum(), 1.0)


def test_tree_distance_counts_edges_through_the_common_ancestor():
    assert TREE.distance("shirt", "shirt") == 0
    assert TREE.distance("shirt", "t-shirt") == 2
    assert TREE.distance("shirt", "trousers") == 4
    assert TREE.distance("shirt", "bag") == 4  # the tops meet at a virtual root


def test_bad_taxonomies_are_refused_with_the_reason():
    with pytest.raises(TaxonomyError, match="cycle"):
        Taxonomy({"a": "b", "b": "a"})
    with pytest.raises(TaxonomyError, match="not itself a node"):
        Taxonomy({"a": "missing"})
    with pytest.raises(TaxonomyError, match="appears twice"):
        Taxonomy.from_obj({"x": ["a"], "y": ["a"]})
    with pytest.raises(TaxonomyError, match="not in the taxonomy: hat"):
        TREE.restricted_to(["shirt", "hat"])
    with pytest.raises(TaxonomyError, match="inner nodes of the taxonomy: upper"):
        TREE.restricted_to(["shirt", "upper"])
    assert set(TREE.restricted_to(["shirt", "bag"]).parents) == {"clothing", "upper", "shirt", "bag"}


# ---------------------------------------------------------------- metrics
def test_thresholds_are_f1_optimal_per_label():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]])
    scores = np.array([[0.9, 0.2], [0.35, 0.1], [0.3, 0.8], [0.1, 0.7], [0.2, 0.75]])
    t = tune_thresholds(targets, scores)
    assert 0.3 < t[0] < 0.35  # both positives (0.9, 0.35) above, the 0.3 negative below
    assert 0.75 < t[1] < 0.8 or 0.7 < t[1] <= 0.75  # F1 is best keeping both positives, with or without 0.7
    m = multilabel_metrics(targets, scores, ["a", "b"], t)
    assert m["per_label"]["a"]["f1"] == 1.0
    assert tune_thresholds(np.zeros((3, 1)), np.ones((3, 1)) * 0.9)[0] == 0.5  # no positives: the default


def test_multilabel_metrics_by_hand():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.4], [0.6, 0.3, 0.1], [0.1, 0.2, 0.3]])
    m = multilabel_metrics(targets, scores, ["a", "b", "c"], [0.5, 0.5, 0.5])
    assert m["per_label"]["a"] == {"ap": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2,
                                   "threshold": 0.5}  # fmt: skip
    assert m["per_label"]["b"]["recall"] == 0.5 and m["per_label"]["b"]["precision"] == 1.0
    assert m["subset_accuracy"] == 0.75  # row 3 misses b
    assert m["hamming_loss"] == pytest.approx(1 / 12)
    assert m["micro"]["f1"] == pytest.approx(2 * 4 / (4 + 5))
    assert m["map"] == pytest.approx(np.mean([1.0, m["per_label"]["b"]["ap"], 1.0]))


def test_hierarchy_metrics_accuracy_per_level_and_mistake_distance():
    targets = np.array([0, 1, 2, 3])
    probs = np.array([[0.7, 0.1, 0.1, 0.1],  # right
                      [0.6, 0.3, 0.05, 0.05],  # shirt for t-shirt: sibling (2), right at level 1 and 2
                      [0.1, 0.1, 0.2, 0.6],  # bag for trousers: distance 4, wrong at level 1
                      [0.1, 0.1, 0.1, 0.7]])  # fmt: skip
    h = hierarchy_metrics(targets, probs, LEAVES, TREE)
    assert h["levels"]["1"]["accuracy"] == 0.75 and h["levels"]["3"]["accuracy"] == 0.5
    assert h["levels"]["2"]["accuracy"] == 0.75
    assert h["mistakes"] == {"2": 1, "4": 1} and h["mean_mistake_distance"] == 3.0


# ---------------------------------------------------------------- data
@pytest.mark.parametrize("flags", [False, True], ids=["separated", "0/1 columns"])
def test_multilabel_csv_in_both_layouts(tmp_path, flags):
    csv_path = make_multilabel_dataset(tmp_path / "shapes", per_combo=3, flags=flags)
    splits = load_splits(DataConfig(source=str(csv_path)))
    assert splits.task == "multilabel"
    assert sorted(splits.classes) == sorted(["red", "green", "blue", "circle", "square", "triangle"])
    every = splits.train + splits.val + splits.test
    assert len(every) == 27 and all(len(s.targets) == 2 for s in every)
    s = next(s for s in every if "blue-square" in s.key)
    assert {splits.classes[i] for i in s.targets} == {"blue", "square"}
    assert all(n > 0 for n in splits.counts()["train"].values())
    record = splits.split_record()
    assert record["task"] == "multilabel" and isinstance(record["test"][0][1], list)


def test_multilabel_csv_rows_with_bad_cells_or_no_labels(tmp_path):
    csv_path = make_multilabel_dataset(tmp_path / "shapes", per_combo=3, flags=True)
    text = csv_path.read_text().splitlines()
    first = text[1].split(",")
    text.append(",".join([first[0].replace("00", "99")] + ["maybe"] * (len(first) - 1)))
    none = first[0].replace("-00", "-01")  # an existing image with none of the labels
    text.append(",".join([none] + ["0"] * (len(first) - 1)))
    text = [line for line in text if not line.startswith(none + ",") or line.endswith(",0,0,0,0,0,0")]
    csv_path.write_text("\n".join(text) + "\n")
    splits = load_splits(DataConfig(source=str(csv_path)))
    assert any("must be 0 or 1" in s.reason for s in splits.skipped)
    empty = [s for s in splits.train + splits.val + splits.test if not s.targets]
    assert len(empty) == 1 and empty[0].label == -1


def test_folders_cannot_be_multilabel_and_the_error_says_what_can(tmp_path):
    root = make_folder_dataset(tmp_path / "colours", per_class=3)
    with pytest.raises(DatasetError, match="folder tree cannot express several labels.*CSV manifest.*';'"):
        load_splits(DataConfig(source=str(root), task="multilabel"))
    csv_path = make_multilabel_dataset(tmp_path / "shapes", per_combo=2)
    with pytest.raises(DatasetError, match="several labels per image, but data.task is multiclass"):
        load_splits(DataConfig(source=str(csv_path), task="multiclass"))


def test_nested_folders_make_a_tree(tmp_path):
    root = make_tree_dataset(tmp_path / "tree", per_leaf=4)
    (root / "warm" / "stray.png").write_bytes((root / "warm" / "red" / "000.png").read_bytes())
    splits = load_splits(DataConfig(source=str(root), task="hierarchical"))
    assert splits.task == "hierarchical"
    assert splits.classes == ["cool/blue", "cool/green", "warm/red", "warm/yellow"]
    assert splits.taxonomy == {"cool": "", "cool/blue": "cool", "cool/green": "cool", "warm": "",
                               "warm/red": "warm", "warm/yellow": "warm"}  # fmt: skip
    assert any("directly in 'warm'" in s.reason for s in splits.skipped)
    assert splits.split_record()["taxonomy"] == splits.taxonomy


def test_a_taxonomy_file_over_flat_folders(tmp_path):
    root = make_folder_dataset(tmp_path / "colours", per_class=3)
    tree = tmp_path / "tree.yaml"
    tree.write_text("primary:\n  warm: [red]\n  cool: [green, blue]\nother: [purple]\n")
    splits = load_splits(DataConfig(source=str(root), taxonomy=str(tree)))
    assert splits.task == "hierarchical" and "purple" not in splits.taxonomy  # branches without data dropped
    assert Taxonomy.from_obj(splits.taxonomy).path("red") == ["primary", "warm", "red"]
    tree.write_text(json.dumps({"warm": ["red"]}))
    with pytest.raises(DatasetError, match="labels not in the taxonomy: blue, green"):
        load_splits(DataConfig(source=str(root), taxonomy=str(tree)))


# ---------------------------------------------------------------- answers
ML = TaskSpec("multilabel", ["red", "circle", "square"], thresholds=np.array([0.5, 0.3, 0.9]))
H = TaskSpec("hierarchical", LEAVES, taxonomy=TREE)


def test_multilabel_answer_lists_labels_above_their_own_thresholds():
    q = check_query(ML, ClassifyQuery(), default_k=5)
    a = answer(ML, np.array([0.6, 0.35, 0.8]), q)
    assert a.labels == ["red", "circle"]  # square's 0.8 is under its 0.9
    assert [p["label"] for p in a.predictions] == ["red", "circle"] and all(p["positive"] for p in a.predictions)
    top = answer(ML, np.array([0.6, 0.35, 0.8]), check_query(ML, ClassifyQuery(top_k=2), 5))
    assert [(p["label"], p["positive"]) for p in top.predictions] == [("square", False), ("red", True)]
    assert top.labels == ["red", "circle"]


def test_hierarchical_answer_carries_the_path_and_answers_at_a_level():
    probs = np.array([0.5, 0.2, 0.1, 0.2])
    a = answer(H, probs, check_query(H, ClassifyQuery(top_k=1), 5))
    assert a.predictions[0]["label"] == "shirt"
    assert [(n["label"], n["level"], round(n["score"], 3)) for n in a.predictions[0]["path"]] == [
        ("clothing", 1, 0.8), ("upper", 2, 0.7), ("shirt", 3, 0.5)]  # fmt: skip
    top = answer(H, probs, check_query(H, ClassifyQuery(level=1), 5))
    assert [(p["label"], round(p["score"], 3)) for p in top.predictions] == [("clothing", 0.8), ("bag", 0.2)]
    assert top.level == 1
    mid = answer(H, probs, check_query(H, ClassifyQuery(level=2, top_k=1), 5))
    assert mid.predictions[0]["label"] == "upper" and [n["label"] for n in mid.predictions[0]["path"]] == [
        "clothing", "upper"]  # fmt: skip


def test_queries_are_checked_against_the_model():
    with pytest.raises(InvalidInput, match="level applies to hierarchical models"):
        check_query(ML, ClassifyQuery(level=1), 5)
    with pytest.raises(InvalidInput, match="between 1 .* and 3"):
        check_query(H, ClassifyQuery(level=4), 5)
    assert check_query(H, ClassifyQuery(level=1, top_k=9), 5).top_k == 2  # capped at the level's nodes


def test_task_spec_round_trips_through_metadata():
    meta = {"classes": ML.classes, **ML.metadata()}
    again = TaskSpec.from_metadata(meta)
    assert again.kind == "multilabel" and np.allclose(again.thresholds, ML.thresholds)
    h = TaskSpec.from_metadata({"classes": LEAVES, **H.metadata()})
    assert h.taxonomy == TREE and h.depth == 3
    assert TaskSpec.from_metadata({"classes": ["a", "b"]}).kind == "multiclass"  # models saved before tasks


# ---------------------------------------------------------------- gate
def ml_summary(map_: float, ap: dict) -> dict:
    per = {n: {"ap": v, "precision": 1, "recall": 1, "f1": 1, "support": 1, "threshold": 0.5} for n, v in ap.items()}
    return gate.summary({"map": map_, "micro": {"f1": 0.9}, "macro": {"f1": 0.9}, "subset_accuracy": 0.8,
                         "num_samples": 10, "per_label": per, "hamming_loss": 0.1})  # fmt: skip


def test_gate_compares_multilabel_models_on_map_and_per_label_ap():
    policy = gate.GatePolicy(tolerance=0.01, max_recall_drop=0.05)
    champion = ml_summary(0.80, {"red": 0.9, "circle": 0.7})
    assert gate.decide(ml_summary(0.81, {"red": 0.9, "circle": 0.72}), champion, policy).promote
    low = gate.decide(ml_summary(0.75, {"red": 0.8, "circle": 0.7}), champion, policy)
    assert not low.promote and "mAP 0.7500 vs champion 0.8000" in low.reason
    drop = gate.decide(ml_summary(0.82, {"red": 0.99, "circle": 0.6}), champion, policy)
    assert not drop.promote and "average precision fell" in drop.reason and "circle" in drop.recall_drops


def test_gate_never_auto_promotes_across_tasks():
    multiclass = {"task": "multiclass", "accuracy": 0.9, "macro_f1": 0.9, "num_samples": 10, "recall": {}}
    d = gate.decide(ml_summary(0.99, {"red": 1.0}), multiclass, gate.GatePolicy())
    assert not d.promote and "multilabel but the champion is multiclass" in d.reason


# ---------------------------------------------------------------- more data and training pieces
def test_positive_weights_follow_each_labels_rarity():
    from training.data.splits import Sample
    from training.tasks import positive_weights

    samples = [Sample(str(i), 0, labels=(0,) if i < 8 else (0, 1)) for i in range(10)]
    w = positive_weights(samples, 2, cap=3.0)
    assert w[0] == 1.0  # every image has label 0: no negatives
    assert w[1] == 3.0  # 8 negatives / 2 positives = 4, capped at 3


def test_a_csv_of_leaf_labels_with_a_taxonomy(tmp_path):
    root = make_folder_dataset(tmp_path / "colours", per_class=3)
    rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.glob("*/*.png"))]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "tree.json").write_text(json.dumps({"red": "warm", "green": "cool", "blue": "cool", "warm": None,
                                                    "cool": ""}))  # fmt: skip
    splits = load_splits(DataConfig(source=str(root / "labels.csv"), taxonomy=str(tmp_path / "tree.json")))
    assert splits.task == "hierarchical" and Taxonomy.from_obj(splits.taxonomy).path("blue") == ["cool", "blue"]


def test_fashion_mnist_mosaics_are_a_multilabel_csv(tmp_path):
    from training.data import find_fashion_mnist
    from training.mosaic import make_mosaics

    try:
        find_fashion_mnist(None)
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed (make setup installs it)")
    manifest = make_mosaics(tmp_path / "mosaic", n_train=40, n_test=10, seed=1)
    splits = load_splits(DataConfig(source=str(manifest), val_fraction=0.2))
    assert splits.task == "multilabel" and len(splits.test) == 10 and all(s.key.count("/test/") for s in splits.test)
    assert all(1 <= len(s.targets) <= 4 for s in splits.train + splits.val + splits.test)
    assert make_mosaics(tmp_path / "mosaic", n_train=40, n_test=10, seed=1) == manifest  # kept, not rewritten


def test_asl_training_runs_and_stores_thresholds(tmp_path):
    from training import load_config, train

    csv_path = make_multilabel_dataset(tmp_path / "shapes", per_combo=3)
    cfg = load_config(dotted=[f"data.source={csv_path}", f"output_dir={tmp_path / 'runs'}", "name=asl", "epochs=1",
                              "batch_size=8", "model.width=4", "model.depth=1", "data.workers=0", "save=false",
                              "multilabel.loss=asl", "model.img_size=32", "augment.mixup=0.2"])  # fmt: skip
    result = train(cfg)
    assert result.report["task"] == "multilabel" and len(result.report["thresholds"]) == 6
    assert "val_map" in result.history[0] and "map" in result.metrics["test"]
