import subprocess
import sys

import pytest
import timm

import vizoo
from vizoo.cli import main


def test_list_models_returns_only_vizoo_models_sorted():
    names = vizoo.list_models()
    assert names == sorted(names)
    for name in names:
        assert timm.models.model_entrypoint(name).__module__.startswith("vizoo.")
    assert "resnet50" not in vizoo.list_models("*")
    assert vizoo.list_models("no_such_model_*") == []


def test_vizoo_names_do_not_shadow_timm_names():
    # timm raises on re-registration of an existing name only as a warning, so check by module
    for name in vizoo.list_models():
        assert timm.models.model_entrypoint(name).__module__.startswith("vizoo.backbones")


def test_cli_help_and_unknown_command(capsys):
    main(["--help"])
    assert "probe" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fti"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'fti'" in err and "Did you mean 'fit'" in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "vizoo.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: vizoo" in out.stdout


def test_bad_input_is_one_line_error_with_exit_code_2(capsys, monkeypatch):
    monkeypatch.delenv("VIZOO_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["models", "--no-such-flag"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["fit", "--model.model_name=nat_tny", "--data.dataset=digits", "--trainer.accelerator=cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "vizoo: error: unknown model 'nat_tny'. Did you mean 'nat_tiny'?" in err
    monkeypatch.setenv("VIZOO_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown model"):
        main(["fit", "--model.model_name=nat_tny", "--data.dataset=digits", "--trainer.accelerator=cpu"])


def test_the_code_passes_the_projects_lint():
    """``ruff check`` with the rules and line length of pyproject.toml's ``[tool.ruff]`` over the package, its
    tools and tests (the same command a contributor runs)."""
    from pathlib import Path

    ruff = pytest.importorskip("ruff")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([ruff.find_ruff_bin(), "check", "vizoo", "tools", "tests"], cwd=root,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
