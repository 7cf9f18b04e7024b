"""The pure core every other package builds on: tasks and labels, answer formats, the cascade and its
conformal thresholds, uncertainty, statistics, the T1 and encoder input codecs, the serving-config
schema, the served contract (tiers, targets, model names, tensors, policies) and the one atomic
write. It imports no other project package and no torch (import-linter checks both, pyproject.toml)."""
