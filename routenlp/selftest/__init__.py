"""A tiny python-backend model and repository that prove the Triton stack works here
(used by `routenlp doctor`, the demo and the integration tests)."""
