"""The loop's decisions mirrored into MLflow, when a tracking server is configured.

Each champion event becomes what a team's MLflow UI shows: the BentoML version as a registered-model version
(``bentoml_tag`` on it), the aliases ``champion`` (what is served now) and ``challenger`` (the last model the
gate judged), and the gate's decision and reason as version tags. The registry stays the source of truth:
events are marked mirrored only once MLflow has them, so while MLflow is down they wait (a warning each time)
and the next periodic run writes them; nothing is lost and serving never waits for it. One worker at a time
mirrors (a lease in the registry); the aliases are set from the registry's state, so the mirror converges.
"""

from __future__ import annotations

import logging
from typing import Any

from service.retraining.records import ChampionEvent
from service.retraining.registry import Registry, holder_id
from training import store
from training.mlflow_models import ensure_version
from training.tracking import mlflow_client

log = logging.getLogger(__name__)
JUDGED = ("promoted", "refused")


def model_card(tag: str) -> dict[str, Any]:
    meta = store.get(tag).info.metadata
    return {
        "tag": tag,
        **{k: meta.get(k) for k in ("architecture", "classes", "task", "metrics", "dataset_fingerprint")},
    }


class MlflowMirror:
    def __init__(self, uri: str, registry: Registry, model_name: str, lease_seconds: float = 60.0):
        self.uri = uri
        self.registry = registry
        self.model_name = model_name
        self.lease_seconds = lease_seconds
        self.holder = holder_id()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    def flush(self) -> int:
        """Write the events MLflow does not have yet; returns how many. Never raises (a periodic task)."""
        try:
            if not self.registry.unmirrored_events(self.model_name, limit=1):
                return 0  # the usual case: a read, no write, no MLflow call
            if not self.registry.lease(f"mlflow-mirror:{self.model_name}", self.holder, self.lease_seconds):
                return 0
            events = self.registry.unmirrored_events(self.model_name)
            if events:
                self._write(events)
                self.registry.mark_mirrored([e.id for e in events])
            return len(events)
        except Exception as exc:  # noqa: BLE001 - MLflow down: the events wait in the registry
            log.warning("MLflow mirror: %s; the decisions wait in the registry and are sent on the next run", exc)
            return 0

    def _version(self, tag: str) -> str:
        return ensure_version(self.client, self.model_name, tag, model_card(tag))

    def _write(self, events: list[ChampionEvent]) -> None:
        client, name = self.client, self.model_name
        challenger = None
        for event in events:
            if event.kind in JUDGED and event.tag:
                version = self._version(event.tag)
                client.set_model_version_tag(name, version, "gate_decision", event.kind)
                client.set_model_version_tag(name, version, "gate_reason", event.reason[:5000])
                if event.job_id:
                    client.set_model_version_tag(name, version, "imgclf_job", event.job_id)
                challenger = version
        if challenger is not None:
            client.set_registered_model_alias(name, "challenger", challenger)
        if champion := self.registry.champion(name):
            client.set_registered_model_alias(name, "champion", self._version(champion))
