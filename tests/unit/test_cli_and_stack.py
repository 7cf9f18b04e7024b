import sysconfig

import pytest

from routenlp.cli import build_parser
from routenlp.doctor import Check, check_import
from routenlp.stack import StackPaths
from routenlp.table import format_table
from routenlp_core.tasks import TASK_NAMES, UnknownTaskError, get_task


def test_cli_has_the_foundation_commands():
    parser = build_parser()
    assert parser.parse_args(["doctor"]).command == "doctor"
    args = parser.parse_args(["data", "build", "--seed", "7"])
    assert (args.command, args.verb, args.seed) == ("data", "build", 7)
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])


def test_library_path_puts_the_venv_python_first(monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/inherited")
    paths = StackPaths.discover()
    parts = paths.library_path().split(":")
    assert parts[0] == sysconfig.get_config_var("LIBDIR")
    assert parts[1].endswith("nvidia_pytriton.libs") and parts[-1] == "/inherited"
    env = paths.server_env({"PATH": "/usr/bin"})
    assert env["PATH"].startswith(str(paths.prefix / "bin")) and env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_failed_import_check_reports_the_fix():
    result = check_import("no_such_module_routenlp")()
    assert isinstance(result, Check) and not result.ok
    assert "ModuleNotFoundError" in result.detail and "make install" in result.fix


def test_format_table_pads_columns():
    text = format_table([{"a": "x", "bb": 1}, {"a": "longer", "bb": 22}])
    assert text.splitlines() == ["a       bb", "------  --", "x       1", "longer  22"]


def test_task_registry():
    assert TASK_NAMES == ("cs_intent", "cs_response", "fin_ner", "fin_summary", "legal_clause", "legal_risk")
    assert get_task("fin_ner").structured and not get_task("cs_response").structured
    with pytest.raises(UnknownTaskError, match="valid tasks: cs_intent, cs_response"):
        get_task("weather")
