"""/install and /events each have their own throttle (issue 12 point 8), so a flood on one cannot starve the other."""

from __future__ import annotations

from typing import Any

import pytest

from operator_tools.cfn_yaml import resources_of_type


def _http_events(template: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    events = {}
    for function in resources_of_type(template, "AWS::Serverless::Function").values():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                props = event["Properties"]
                events[(props["Method"], props["Path"])] = props
    return events


@pytest.mark.parametrize(("path", "prefix"), [("/install", "InstallRoute"), ("/events", "EventsRoute")])
def test_bitrix24_delivery_routes_have_their_own_throttle(
    template: dict[str, Any], path: str, prefix: str
) -> None:
    settings = _http_events(template)[("POST", path)].get("RouteSettings")
    assert settings == {
        "ThrottlingRateLimit": {"Ref": f"{prefix}RateLimit"},
        "ThrottlingBurstLimit": {"Ref": f"{prefix}BurstLimit"},
    }
    for kind in ("RateLimit", "BurstLimit"):
        parameter = template["Parameters"][f"{prefix}{kind}"]
        assert parameter["Type"] == "Number"
        assert parameter["MinValue"] >= 1
        # Below the stage default, so one route's own bucket is the binding limit
        default_name = "ApiThrottlingRateLimit" if kind == "RateLimit" else "ApiThrottlingBurstLimit"
        assert parameter["Default"] <= template["Parameters"][default_name]["Default"]


def test_the_two_delivery_routes_do_not_share_a_bucket(template: dict[str, Any]) -> None:
    events = _http_events(template)
    install, deliveries = (
        events[("POST", "/install")]["RouteSettings"],
        events[("POST", "/events")]["RouteSettings"],
    )
    assert install["ThrottlingRateLimit"] != deliveries["ThrottlingRateLimit"]
    assert install["ThrottlingBurstLimit"] != deliveries["ThrottlingBurstLimit"]
