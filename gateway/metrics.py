"""The gateway's own /metrics (prometheus_client, a registry of its own): per-tenant requests,
spend, refusals and remaining budget, and the per-tier health gauges."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.health import STATE_VALUES

UNKNOWN_TENANT = "(unknown)"  # refusals before a key names a tenant


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("routenlp_gateway_requests", "Requests answered by the gateway, by tenant, endpoint and HTTP status", ["tenant", "endpoint", "status"], registry=self.registry)
        self.spend = Counter("routenlp_gateway_spend_dollars", "Dollars charged to each tenant (METADATA cost_usd)", ["tenant"], registry=self.registry)
        self.refusals = Counter("routenlp_gateway_refusals", "Requests refused before routing, by tenant and reason (budget, auth)", ["tenant", "reason"], registry=self.registry)
        self.remaining = Gauge("routenlp_gateway_budget_remaining_dollars", "Budget left in the tenant's tightest period, after its last request", ["tenant", "period"], registry=self.registry)
        self.tier_state = Gauge("routenlp_gateway_tier_state", "Tier state as the gateway sees it: 0 serving, 1 half-open, 2 open", ["tier"], registry=self.registry)
        self.tier_error_rate = Gauge("routenlp_gateway_tier_error_rate", "Failed share of the tier's probes and relayed calls in the last minute", ["tier"], registry=self.registry)
        self.tier_requests = Gauge("routenlp_gateway_tier_requests_last_minute", "Requests the tier answered in the last minute (Triton's counters)", ["tier"], registry=self.registry)
        self.tier_fallbacks = Gauge("routenlp_gateway_tier_fallbacks_last_minute", "Calls to the tier routed around in the last minute (Triton's counters)", ["tier"], registry=self.registry)

    def set_tiers(self, snapshot: dict[str, Any]) -> None:
        for tier, row in snapshot["tiers"].items():
            self.tier_state.labels(tier).set(STATE_VALUES[row["state"]])
            self.tier_error_rate.labels(tier).set(row["error_rate"])
            self.tier_requests.labels(tier).set(row["requests_last_minute"])
            self.tier_fallbacks.labels(tier).set(row["fallbacks_last_minute"])
