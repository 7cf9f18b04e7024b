"""The OpenAI-compatible gateway in front of the `routenlp` entry model (Triton, gRPC).

tenants (API keys -> tenants and caps), ledger (durable spend per UTC day / month), pricing (the
most one request can cost), upstream (the asyncio gRPC call), openai_schema (requests and answers
in OpenAI's shapes), health (per-tier state), app (the FastAPI routes), process (start/stop it
as a server process). Serving code (bls_router) never imports this package.
"""
