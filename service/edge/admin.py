"""Admin routes: retrain, jobs, promotion, rollback, retrain policies, the labelling queue, feedback. All need
the bearer token.

The token comes from settings (``IMGCLF_ADMIN_TOKEN`` or a mounted file); it is compared in
constant time and never logged. Without one, the routes are closed unless ``IMGCLF_DEV_MODE``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse

from service.edge.parsing import file_bytes, read_form
from service.edge.schemas import (
    CapturesResponse,
    FeedbackResponse,
    JobAccepted,
    JobInfo,
    LabelRequest,
    ModelsResponse,
    PoliciesResponse,
    PromoteRequest,
    RollbackRequest,
    RolloutDecisionRequest,
    RolloutRequest,
    RolloutResponse,
    ShadowRequest,
    error_responses,
)
from service.errors import Forbidden, InvalidInput, Unauthorized
from service.retraining.operations import Operations
from service.retraining.records import Capture, ChampionEvent, Job, RetrainPolicies, RetrainRequest, Rollout

ADMIN_ERRORS = error_responses(HTTPStatus.BAD_REQUEST, HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN,
                               HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT, HTTPStatus.SERVICE_UNAVAILABLE)  # fmt: skip

FEEDBACK_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", "label"],
    "properties": {"image": {"type": "string", "format": "binary"}, "label": {"type": "string"}}}}}}}  # fmt: skip


def check_token(authorization: str | None, expected: str | None, dev_mode: bool) -> None:
    """Raise unless ``authorization`` is ``Bearer <expected>``."""
    if dev_mode:
        return
    if not expected:
        raise Forbidden(
            "admin endpoints are disabled: no admin token is configured (set IMGCLF_ADMIN_TOKEN or "
            "IMGCLF_ADMIN_TOKEN_FILE, or IMGCLF_DEV_MODE=true locally)",
            reason="admin_disabled",
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("admin endpoint: send the header 'Authorization: Bearer <admin token>'")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden("the admin token is not valid", reason="bad_token")


def create_admin_router(get_ops: Callable[[], Operations]) -> APIRouter:
    def admin(request: Request) -> Operations:
        ops = get_ops()
        secret = ops.settings.admin_token
        check_token(request.headers.get("authorization"), secret.get_secret_value() if secret else None,
                    ops.settings.dev_mode)  # fmt: skip
        return ops

    router = APIRouter(tags=["admin"], responses=ADMIN_ERRORS)
    Admin = Depends(admin)

    @router.post("/retrain", status_code=202, response_model=JobAccepted, summary="Start a retraining job")
    def retrain(body: RetrainRequest, ops: Operations = Admin) -> JobAccepted:
        job = ops.start_retrain(body)
        return JobAccepted(job_id=job.id, status=job.status, url=f"/jobs/{job.id}")

    @router.get("/jobs", response_model=list[JobInfo], summary="Retraining jobs, newest first")
    def jobs(status: str | None = Query(None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
             limit: int = Query(50, ge=1, le=500), ops: Operations = Admin) -> list[Job]:  # fmt: skip
        return ops.registry.jobs(ops.model_name, status, limit)

    @router.get("/jobs/{job_id}", response_model=JobInfo, summary="One job: progress, log tail, decision")
    def job(job_id: str, ops: Operations = Admin) -> JobInfo:
        job = ops.registry.job(job_id)
        rollout_id = job.decision.rollout_id if job.decision else None
        rollout = ops.registry.rollout_by_id(rollout_id) if rollout_id else None
        return JobInfo(**job.model_dump(), log_tail=ops.log_tail(job), rollout=rollout)

    @router.post("/jobs/{job_id}/cancel", response_model=JobInfo, summary="Cancel a queued or running job")
    def cancel(job_id: str, ops: Operations = Admin) -> JobInfo:
        job = ops.cancel(job_id)
        return JobInfo(**job.model_dump(), log_tail=ops.log_tail(job))

    @router.get("/models", response_model=ModelsResponse, summary="Stored versions, champion and its history")
    def models(ops: Operations = Admin) -> dict:
        return ops.models()

    @router.post("/models/promote", response_model=ChampionEvent, summary="Serve a given version (it must load)")
    def promote(body: PromoteRequest, ops: Operations = Admin) -> ChampionEvent:
        return ops.promote(body.tag, body.reason)

    @router.post("/models/shadow", response_model=dict[str, Any],
                 summary="Score a version beside the champion on live images, observing only")  # fmt: skip
    def shadow(body: ShadowRequest, ops: Operations = Admin) -> dict | None:
        return ops.shadow(body.tag, body.fraction, body.reason)

    @router.delete("/models/shadow", status_code=204, summary="Stop shadowing (aborts the active rollout)")
    def stop_shadow(ops: Operations = Admin) -> None:
        ops.shadow(None)

    @router.get("/rollout", response_model=RolloutResponse,
                summary="The active rollout: stage, guards with live values and thresholds, decisions")  # fmt: skip
    def rollout(ops: Operations = Admin) -> dict:
        return ops.rollout()

    @router.post("/rollout", response_model=Rollout, status_code=201,
                 summary="Roll a version out: shadow, then canary, then champion (or the plan given)")  # fmt: skip
    def start_rollout(body: RolloutRequest, ops: Operations = Admin) -> Rollout:
        return ops.start_rollout(body.tag, body.reason, body.plan)

    @router.post("/rollout/promote", response_model=Rollout, summary="Promote the rollout's challenger now")
    def promote_rollout(body: RolloutDecisionRequest | None = None, ops: Operations = Admin) -> Rollout:
        return ops.decide_rollout(True, (body or RolloutDecisionRequest()).reason)

    @router.post("/rollout/abort", response_model=Rollout, summary="Abort the rollout: the champion answers all")
    def abort_rollout(body: RolloutDecisionRequest | None = None, ops: Operations = Admin) -> Rollout:
        return ops.decide_rollout(False, (body or RolloutDecisionRequest()).reason)

    @router.post("/models/rollback", response_model=ChampionEvent, summary="Serve the previous champion again")
    def rollback(body: RollbackRequest | None = None, ops: Operations = Admin) -> ChampionEvent:
        return ops.rollback((body or RollbackRequest()).reason)

    @router.get("/policies", response_model=PoliciesResponse, summary="The retrain policies and their signals")
    def policies(ops: Operations = Admin) -> dict:
        return ops.policies()

    @router.put("/policies", response_model=PoliciesResponse,
                summary="Set the retrain policies for every worker (overrides IMGCLF_RETRAIN_POLICIES)")  # fmt: skip
    def set_policies(body: RetrainPolicies, ops: Operations = Admin) -> dict:
        return ops.set_policies(body)

    @router.delete("/policies", response_model=PoliciesResponse, summary="Back to the settings' retrain policies")
    def reset_policies(ops: Operations = Admin) -> dict:
        return ops.set_policies(None)

    @router.get("/captures", response_model=CapturesResponse, summary="The labelling queue: captured live images")
    def captures(status: str | None = Query("pending", pattern="^(pending|labelled|skipped|none)$"),
                 limit: int = Query(50, ge=1, le=500), ops: Operations = Admin) -> dict:  # fmt: skip
        return ops.captures(status, limit)

    @router.get("/captures/{sha256}/image", response_class=FileResponse, summary="A captured image")
    def capture_image(sha256: str = Path(..., pattern="^[0-9a-f]{64}$"), ops: Operations = Admin) -> FileResponse:
        return FileResponse(ops.capture_file(sha256), headers={"Cache-Control": "private, max-age=3600"})

    @router.post("/captures/{sha256}", response_model=Capture, summary="Label, skip or reject a captured image")
    def settle_capture(body: LabelRequest, sha256: str = Path(..., pattern="^[0-9a-f]{64}$"),
                       ops: Operations = Admin) -> Capture:  # fmt: skip
        return ops.settle_capture(sha256, body.action, body.label)

    @router.post("/feedback", response_model=FeedbackResponse, summary="An image and its correct label",
                 openapi_extra=FEEDBACK_BODY)  # fmt: skip
    async def feedback(request: Request, ops: Operations = Admin) -> FeedbackResponse:
        limit = ops.settings.max_upload_bytes
        fields = await read_form(request, limit + 64 * 1024, max_files=1)
        label = fields.get("label")
        if not isinstance(label, str) or "image" not in fields:
            raise InvalidInput("send multipart/form-data with a file field 'image' and a text field 'label'",
                               reason="bad_field")  # fmt: skip
        data = await file_bytes(fields["image"], "image", limit)
        from starlette.concurrency import run_in_threadpool

        fb = await run_in_threadpool(ops.feedback, data, label)
        return FeedbackResponse(sha256=fb.sha256, label=fb.label, duplicate=fb.duplicate)

    return router
