"""Shared fixtures: a real tritonserver on a generated self-test repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from routenlp.processes import lost_servers
from routenlp.selftest.repository import build_selftest_repository
from routenlp.triton_server import TritonServer


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test says plainly when a server it relied on died (issue 21: a run lost its
    tritonserver and only showed connection errors)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        lost = lost_servers()
        if lost:
            report.sections.append(("servers lost", "\n\n".join(lost)))


@pytest.fixture(scope="session")
def selftest_server(tmp_path_factory) -> TritonServer:
    """tritonserver serving the echo model; stopped (and its stubs killed) at session end."""
    root = tmp_path_factory.mktemp("triton")
    repo = build_selftest_repository(root / "repo")
    server = TritonServer(repo, root / "server.log", load_models=["echo"])
    server.start(timeout_s=120)
    yield server
    server.stop()


@pytest.fixture
def write_broken_model(tmp_path) -> "callable":
    """Writes a repository whose model fails in initialize, to check failures are loud."""

    def make(message: str) -> Path:
        from export.repository import write_model_version
        from routenlp.selftest.repository import ECHO_SPEC

        source = tmp_path / "broken_model.py"
        source.write_text(
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            f"        raise RuntimeError({message!r})\n"
        )
        repo = tmp_path / "broken_repo"
        write_model_version(repo, ECHO_SPEC, {"model.py": source}, version=1)
        return repo

    return make


@pytest.fixture(scope="session")
def tiny_build():
    """The tiny-profile portfolio, built (or taken from the step cache under artifacts/)."""
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio

    build = PortfolioBuild(load_portfolio(profile="tiny"), progress=False)
    build.steps = build.run()
    return build


@pytest.fixture(scope="session")
def tiny_repository(tiny_build, tmp_path_factory) -> Path:
    from export.repository_builder import write_repository

    repo = tmp_path_factory.mktemp("tiny") / "model_repository"
    write_repository(tiny_build, repo, target="cpu")
    return repo
