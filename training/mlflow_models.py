"""BentoML store versions as MLflow registered-model versions (shared by training and the service's mirror).

A registered model is named like the store's model; each of its versions carries the BentoML tag it stands
for (``bentoml_tag``) and points at the run that trained it (its report as the version's source). The store
stays where models are served from: MLflow holds the record, not the weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TAG_KEY = "bentoml_tag"


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="imgclf model (versions mirror the BentoML store)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def version_of(client: Any, name: str, tag: str) -> str | None:
    """The MLflow version standing for BentoML ``tag``, if there is one."""
    found = client.search_model_versions(f"name='{name}' and tags.{TAG_KEY}='{tag}'")
    return str(min(int(v.version) for v in found)) if found else None


def register_version(client: Any, name: str, tag: str, run_id: str) -> str:
    """The version for ``tag`` (created from ``run_id``'s report when there is none yet)."""
    _ensure_registered_model(client, name)
    if version := version_of(client, name, tag):
        return version
    created = client.create_model_version(name, f"runs:/{run_id}/report", run_id=run_id, tags={TAG_KEY: tag},
                                          description=f"BentoML model {tag}", await_creation_for=30)  # fmt: skip
    return str(created.version)


def ensure_version(client: Any, name: str, tag: str, card: dict[str, Any]) -> str:
    """The version for ``tag``; a model trained without MLflow gets a run of its own holding its model card."""
    if version := version_of(client, name, tag):
        return version
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run_id = client.create_run(exp_id, run_name=f"registered {tag}", tags={TAG_KEY: tag}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        client.log_artifacts(run_id, tmp, "report")
    client.set_terminated(run_id, "FINISHED")
    return register_version(client, name, tag, run_id)
