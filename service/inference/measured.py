"""One measurement for all the workers of a server: the first worker to load a model times the runtimes and the
batch sizes while the others wait, and they reuse what it found.

Timed side by side, each worker's timing ran beside another's start-up (a runtime compiling, another timing),
and the verdicts differed within one server: on 2 cores of an AMD EPYC (Zen 4), one of two OpenVINO workers kept
batches of 32 ("a smaller batch saves 3%") while the other capped them at 4 (14%), and a server's two workers
chose ONNX Runtime and OpenVINO. A server whose workers serve alike behaves alike, and one timing alone is the
truer one. Waiting costs the later workers a few seconds of start-up (they still build and warm their runtime).

The record lives beside the model's exports, under the key of the server (its parent process) and of the
options: another server, or the next start of this one, measures afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from service.inference.options import InferenceOptions
from service.inference.runtimes import export_dir, locked, read_record, write_record
from training.stored import StoredModel

RECORD = "measured.json"


@dataclass
class Measurement:
    """What a worker measured, for the others: the runtime chosen, ``GET /model``'s report of the choice (with
    the batch and lone-image timings), the batch limit and whether a lone image gets every core."""

    runtime: str
    report: dict
    batch_limit: int
    lone: bool = False


def server_key() -> str:
    """This process's parent (a server's workers share it), with its start time: a pid is reused, not both."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/stat") as fh:
            started = fh.read().rsplit(")", 1)[1].split()[19]  # field 22, counting from the state after the name
    except (OSError, IndexError):
        started = "?"
    return f"{parent}-{started}"


def _key(options: InferenceOptions) -> str:
    fields = dataclasses.asdict(options)
    fields.pop("measured_by", None)
    return json.dumps(fields, sort_keys=True)


@contextlib.contextmanager
def measured_once(stored: StoredModel, options: InferenceOptions) -> Iterator[tuple[Measurement | None, list]]:
    """Around a worker's measuring: ``(found, keep)``, where ``found`` is what another worker of the same server
    measured with the same options, if one did; else the caller measures (the other workers wait) and appends its
    :class:`Measurement` to ``keep`` for them. With ``options.measured_by`` unset, each worker measures itself."""
    keep: list[Measurement] = []
    if not options.measured_by:
        yield None, keep
        return
    directory, key = export_dir(stored), _key(options)
    with locked(directory, name=".measure.lock"):
        record = read_record(directory / RECORD)
        entries = record.get("entries", {}) if record.get("server") == options.measured_by else {}
        found = entries.get(key)
        yield (Measurement(**found) if found else None), keep
        if keep and not found:
            entries[key] = dataclasses.asdict(keep[0])
            write_record(directory / RECORD, {"server": options.measured_by, "entries": entries})
