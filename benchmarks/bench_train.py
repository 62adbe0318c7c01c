"""Training benchmark: images/s for fp32 vs bf16 (+channels-last), and time to the target accuracy.

    python benchmarks/bench_train.py [--config configs/fashion-cnn.yaml] [--target 0.93] [--skip-run]

Prints one table; numbers are for the machine at hand (shared machines are noisy: compare ratios
measured in one run).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from training import load_config, train
from training.autotune import cpu_description
from training.engine import Runtime, train_one_epoch
from training.models import build_model, config_kwargs


def throughput(cfg, precision: str, channels_last: bool, steps: int = 15) -> float:
    m = cfg.model
    size, channels = m.img_size or 28, m.channels or 1
    model = build_model(m.name, **config_kwargs(m, 10, channels))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rt = Runtime(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else None, channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    bs = cfg.batch_size
    batches = [(torch.randn(bs, channels, size, size), torch.randint(0, 10, (bs,))) for _ in range(steps)]
    loss = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, batches[:3], opt, loss, rt, progress=False)
    return train_one_epoch(model, batches, opt, loss, rt, progress=False)["img_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/fashion-cnn.yaml")
    p.add_argument("--target", type=float, default=0.93, help="test accuracy to reach")
    p.add_argument("--skip-run", action="store_true", help="only measure throughput")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config)

    rows = []
    for precision, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            continue
        rows.append((precision, cl, throughput(cfg, precision, cl)))
    base = rows[0][2]
    print(f"\n== processor: {cpu_description()} ==")
    print(
        f"== training throughput: {cfg.model.name} width {cfg.model.width} depth {cfg.model.depth}, "
        f"batch {cfg.batch_size}, {torch.get_num_threads()} threads (model step only) =="
    )
    for precision, cl, ips in rows:
        print(f"{precision:<5} channels_last={cl!s:<5} {ips:8.0f} img/s  x{ips / base:.2f}")
    if args.skip_run:
        return

    reached: dict[str, float] = {}
    start = time.monotonic()

    def on_epoch(record: dict) -> None:
        if record["val_acc"] >= args.target and "val" not in reached:
            reached["val"] = time.monotonic() - start

    result = train(cfg.model_copy(update={"save": False, "name": f"{cfg.name}-bench"}), on_epoch_end=on_epoch)
    test_acc = result.metrics["test"]["accuracy"]
    train_s = result.report["train_seconds"]
    print(f"\n== end to end: {args.config} ==")
    print(f"epochs run        {len(result.history)} (best {result.best_epoch})")
    print(f"training time     {train_s:.0f} s (data loading and validation included)")
    print(f"mean img/s        {sum(h['img_per_s'] for h in result.history) / len(result.history):.0f}")
    print(f"val >= {args.target}      " + (f"after {reached['val']:.0f} s" if "val" in reached else "not reached"))
    print(f"test accuracy     {test_acc:.4f}  ({'meets' if test_acc >= args.target else 'MISSES'} {args.target})")
    run = result.report["run"]
    chosen = run["precision"]
    layout = " + channels-last" if chosen["channels_last"] else ""
    print(f"precision         {chosen['precision']}{layout} (auto measured img/s: {chosen['rates'] or 'not measured'})")
    if run["note"]:
        print(f"NOTE              {run['note']}")


if __name__ == "__main__":
    main()
