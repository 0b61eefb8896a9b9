"""The backend's commands: each parsed message → a change of the desired state → the answers to send.

The server only parses and sends; what a message means is decided here, once.
"""

from __future__ import annotations

import logging

from . import protocol as p
from . import views
from .core import Gateway
from .desired import Refusal

log = logging.getLogger("gateway.commands")


def _refused(refusal: Refusal, request_type: str, index: int | None = None) -> p.ErrorMessage:
    return p.error_message(p.ProtocolError(refusal.code, refusal.message, request_type,
                                           subscription_identifier=refusal.subscription_identifier, index=index))


async def handle(gateway: Gateway, msg: p.IncomingMessage) -> list[p.OutgoingMessage]:
    """Apply one backend message; the messages to send back (errors for what was refused)."""
    answers: list[p.OutgoingMessage] = []
    desired = gateway.desired
    if isinstance(msg, p.SetSubscriptionList):
        for item in msg.refused:
            answers.append(p.error_message(p.ProtocolError(
                p.ErrorCode.INVALID_MESSAGE, item.message, msg.type,
                subscription_identifier=item.subscription_identifier, index=item.index)))
        keep = [item.subscription_identifier for item in msg.refused if item.subscription_identifier]
        refusals = desired.replace_backend(msg.subscriptions, keep=keep)
        place = {s.subscription_identifier: i for s, i in zip(msg.subscriptions, msg.indices, strict=True)}
        answers += [_refused(r, msg.type, place.get(r.subscription_identifier)) for r in refusals]
        gateway.mark_dirty()
    elif isinstance(msg, p.Subscribe):
        answers += [_refused(r, msg.type) for r in desired.add_backend(msg.subscription)]
        gateway.mark_dirty()
    elif isinstance(msg, p.Unsubscribe):
        if desired.remove_backend(msg.subscription_identifier):
            gateway.mark_dirty()
    elif isinstance(msg, p.RequestState):
        answers.append(views.state_report(gateway))
    elif isinstance(msg, p.SetSessionId):
        await gateway.set_display(msg.display_identifier, session_id=msg.session_id)
    elif isinstance(msg, p.SetProgressionStage):
        await gateway.set_display(msg.display_identifier, stage=msg.progression_stage)
    elif isinstance(msg, p.PatchSessionResult):
        log.info("patchSessionResult for session %s: %s", msg.session_id, "ok" if msg.success else "failed")
    for answer in answers:
        if isinstance(answer, p.ErrorMessage):
            gateway.metrics.backend_errors.labels(answer.error.code.value).inc()
    return answers
