"""The project's own files: scripts answer --help, environments agree, CI runs README's command."""
import re
import shlex
import sys

import pytest
import yaml

from conftest import ROOT, run_script

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTALLED = [*(f"{name}.py" for name in PYPROJECT["tool"]["setuptools"]["py-modules"]),
             *PYPROJECT["tool"]["setuptools"]["packages"]]                              # units.py, virnucpro
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]
                 if p.name not in INSTALLED)
README = (ROOT / "README.md").read_text()
TEST_COMMAND = 'python -m pip install -e ".[test]" && python -m pytest'


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script):
    result = run_script(script, "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_user_mistake_gives_one_line_and_no_traceback(tmp_path):
    result = run_script("scripts/make_train_dataset.py", "--length", "300", "--data-dir", tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'}: no such folder; download genomes first (scripts/download_data.py)"]


def test_ci_runs_exactly_the_readme_test_command():
    assert f"\n{TEST_COMMAND}\n" in README
    ci_commands = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_commands[-1] == TEST_COMMAND
    assert "python -m pip install torch==2.13.0" in ci_commands
    # and the whole suite once more on the oldest supported transformers
    assert any('"transformers==4.57.*"' in line for line in ci_commands)
    assert any(line.endswith("/bin/python -m pytest") for line in ci_commands[:-1])


def _scripts_named(command: str) -> list[str]:
    return [word for word in shlex.split(command) if word.endswith(".py")]


def test_pixi_tasks_name_existing_scripts_and_pins_agree():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    tasks = pixi["tasks"]
    assert "test" in tasks and tasks["test"] == "python -m pytest"
    for name, command in tasks.items():
        for script in _scripts_named(command):
            assert (ROOT / script).is_file(), f"pixi task {name} names missing {script}"
    torch_pin = pixi["pypi-dependencies"]["torch"]
    assert f"pip install --no-cache-dir torch{torch_pin}" in (ROOT / "Dockerfile").read_text()
    assert f"pip install torch{torch_pin}" in (ROOT / ".ci/run").read_text()
    assert pixi["pypi-dependencies"]["virnucpro"]["path"] == "."          # the rest from pyproject
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch>=2.4" in pyproject["project"]["dependencies"]           # admits the pin


def test_docker_compose_services_run_existing_scripts_on_the_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "hf-cache" in compose["volumes"]
    for name, service in compose["services"].items():
        assert service["build"] == "."
        assert "hf-cache:/cache/huggingface" in service["volumes"] and "./models:/app/models" in service["volumes"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        for script in _scripts_named(" ".join(service["command"])):
            assert (ROOT / script).is_file(), f"compose service {name} names missing {script}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", dockerfile, re.M)
    assert 'pip install --no-cache-dir -e ".[test]"' in dockerfile
    assert "HF_HOME=/cache/huggingface" in dockerfile and "VIRNUCPRO_MODELS=/app/models" in dockerfile
    before_install = dockerfile[:dockerfile.index('pip install --no-cache-dir -e ".[test]"')]
    copied = {name.rstrip("/") for line in re.findall(r"^COPY (.*) \S+$", before_install, re.M) for name in line.split()}
    assert set(INSTALLED) <= copied                        # the editable install needs what pyproject installs
    assert compose["services"]["fetch-models"]["command"][-1] == "scripts/fetch_models.py"
