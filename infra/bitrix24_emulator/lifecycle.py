"""The realistic app lifecycle: install per app kind, uninstall by an administrator, bound-event delivery.

Each delivery is one POST, never retried (docs/bitrix24-facts.md F-EVENTS-3). Network calls happen outside
the state lock; the delivery log records the event, the handler and the status, never a token.
"""

from __future__ import annotations

from typing import Any

from bitrix24_emulator import installer
from bitrix24_emulator.events import Delivery
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.users import get_user


def send(state: EmulatorState, delivery: Delivery) -> dict[str, Any]:
    """POST one delivery once and log it; a handler that does not answer is logged with its error."""
    with state.lock:
        timeout = state.config.event_timeout_seconds
        sent_at = state.clock.now()
    try:
        outcome = installer.post_form(delivery.handler, {}, delivery.fields, timeout)
    except (OSError, ValueError) as exc:
        outcome = {"status": None, "error": type(exc).__name__}
    with state.lock:
        return state.delivery_log.record(delivery, outcome, sent_at)


def user_ready_delivery(state: EmulatorState) -> Delivery | None:
    """ONAPPUSERREADY to the install URL (Market apps only): a system-user pair plus the installer's pair."""
    with state.lock:
        handler = state.install_url_handler("ONAPPUSERREADY")
        if handler is None:
            return None
        system, _ = state.issue_tokens("system_user", state.config.system_user_id)
        installer_pair, _ = state.issue_tokens("install_user_ready", state.installer_user_id)
        fields = installer.user_ready_fields(state, system, installer_pair)
        return Delivery("ONAPPUSERREADY", handler, fields, None, state.installer_user_id)


def install(state: EmulatorState, user_id: int | None = None) -> dict[str, Any]:
    """Install the app as `user_id` (an administrator) per app_mode; returns what was delivered (no tokens).

    api_only: ONAPPINSTALL is POSTed to install_url, then (market_app) ONAPPUSERREADY.
    ui: the install is marked started; the frame page POST and BX24.installFinish() finish it (then a
    Market app gets ONAPPUSERREADY).
    """
    with state.lock:
        config = state.config
        user = get_user(config, user_id or config.user_id)
        if not user.admin:
            raise ValueError(f"user {user.user_id} is not a portal administrator and may not install apps")
        if config.app_mode == "api_only" and not config.install_url:
            raise ValueError("an api_only app needs install_url (POST /_emulator/config)")
        mode = config.app_mode
        deliveries: list[Delivery] = []
        if mode == "api_only":
            state.begin_install(finished=True, user_id=user.user_id)
            pair, response = state.issue_tokens("install_event", user.user_id)
            fields = installer.install_event_fields(state, pair, response, event_handler_id=False)
            deliveries.append(Delivery("ONAPPINSTALL", config.install_url, fields, None, user.user_id))
        else:
            state.begin_install(finished=False, user_id=user.user_id)
    results = [send(state, d) for d in deliveries]
    if mode == "api_only":
        ready = user_ready_delivery(state)
        if ready is not None:
            results.append(send(state, ready))
    with state.lock:
        return {
            "app_mode": mode,
            "market_app": state.config.market_app,
            "user_id": user.user_id,
            "installed": state.installed,
            "install_pending": state.install_pending,
            "deliveries": results,
        }


def finish_install(state: EmulatorState) -> tuple[int, Delivery | None]:
    """BX24.installFinish(): the UI install is finished; a Market app's ONAPPUSERREADY is due."""
    calls, finished_now = state.record_install_finish()
    return calls, user_ready_delivery(state) if finished_now else None


def uninstall(state: EmulatorState, clean: bool) -> dict[str, Any]:
    """An administrator removes the app: chains revoked, bindings dropped, ONAPPUNINSTALL to bound handlers.

    The portal deletes the app before its event queue sends ONAPPUNINSTALL, so the event arrives when the
    app is already gone (app.info with an old token answers that), and carries no token.
    """
    with state.lock:
        targets = state.bindings.for_event("ONAPPUNINSTALL")
        token = state.application_token
        deliveries = [
            Delivery(
                "ONAPPUNINSTALL",
                row.handler,
                installer.uninstall_fields(
                    state, clean=clean, application_token=token, handler_id=row.binding_id
                ),
                row.binding_id,
                None,
            )
            for row in targets
        ]
        state.uninstall()
    results = [send(state, d) for d in deliveries]
    return {"uninstalled": True, "clean": clean, "deliveries": results}


def bound_deliveries(
    state: EmulatorState, event: str, data: list[tuple[str, str]], actor_user_id: int
) -> list[Delivery]:
    """Deliveries for an event raised by a REST call (caller holds the lock): one per bound handler.

    The auth block carries an access token of the binding's user, or of the acting user when the
    binding has none (docs/bitrix24-facts.md F-EVENTS-6).
    """
    if not state.installed or state.install_pending:
        return []  # no events until the install is finished (docs/bitrix24-facts.md F-APP-4, F-EVENTS-5)
    deliveries = []
    # One `ts` per event: the portal stamps the event once and queues it for every bound row
    # (docs/bitrix24-facts.md#f-events-12), so the copies carry the same ts.
    ts = int(state.clock.now())
    for row in state.bindings.for_event(event):
        auth_user = row.user_id or actor_user_id
        pair, _ = state.issue_tokens("event", auth_user)
        fields = installer.bound_event_fields(state, event, data, pair, row.binding_id, ts=ts)
        deliveries.append(Delivery(event, row.handler, fields, row.binding_id, auth_user))
    return deliveries
