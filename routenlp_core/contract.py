"""The served contract in one spelling: tier names, build targets, model names, the entry model's
tensors and its POLICY values. The build writes it into config.pbtxt, the BLS checks requests
against it, and every client sends it; each of them imports it from here."""

from __future__ import annotations

TIERS = ("t1", "t2", "t3", "t4")  # cheapest first
TARGETS = ("cpu", "ngc")  # cpu: this Triton build; ngc: the stock NGC tritonserver + vLLM image

# Model names in the repository.
BLS_MODEL = "routenlp"  # the routing entry model clients call
ROUTER_MODEL = "router"
# The router's loss-term ablations (paper 5), each served as its own ONNX model.
ROUTER_ABLATION_MODELS = ("router_no_cost", "router_no_quality")


def t1_model(task: str) -> str:
    return f"t1_{task}"


# The entry model's tensors, all BYTES of shape [1, 1] (batch dimension first).
TEXT, TASK, MAX_TIER, REQUEST_ID, POLICY = "TEXT", "TASK", "MAX_TIER", "REQUEST_ID", "POLICY"
REQUIRED_INPUTS = (TEXT, TASK)
OPTIONAL_INPUTS = (MAX_TIER, REQUEST_ID, POLICY)
INPUTS = (*REQUIRED_INPUTS, *OPTIONAL_INPUTS)
OUTPUT, METADATA = "OUTPUT", "METADATA"
OUTPUTS = (OUTPUT, METADATA)

# POLICY values: the learned router + conformal cascade, or a fixed tier (the Always-tN baselines,
# served over the same models; no router call, no escalation, the same fallbacks).
ROUTED_POLICY = "routenlp"
FIXED_TIER_POLICIES = {f"always-{tier}": tier for tier in TIERS}
# Cascade ablations (paper 5): the same router, then no escalation at all, or one fixed
# threshold on u for every (task, tier) instead of the conformal ones.
NO_CASCADE_POLICY = "routenlp-no-cascade"
FIXED_THRESHOLD_POLICY = "routenlp-fixed-threshold"
# Router ablations: the conformal cascade behind a router trained without one loss term.
ROUTER_ABLATION_POLICIES = {"routenlp-" + model.replace("_", "-"): model for model in ROUTER_ABLATION_MODELS}
ROUTED_POLICIES = (ROUTED_POLICY, NO_CASCADE_POLICY, FIXED_THRESHOLD_POLICY, *ROUTER_ABLATION_POLICIES)
POLICIES = (*ROUTED_POLICIES, *FIXED_TIER_POLICIES)


class RequestError(ValueError):
    """A client mistake in one request; the Triton adapters answer it with INVALID_ARG."""
