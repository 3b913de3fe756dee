"""The project's own files: scripts answer --help and --version, the installed command runs them, environments
agree, CI runs README's command."""
import argparse
import concurrent.futures
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

import prediction
import virnucpro
from conftest import ROOT, predict_args, run_script
from scripts import command
from virnucpro.prediction.outputs import RESULT_FILES

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# the scripts: the top ones (units.py is the card) and those of scripts/ (its links to the top ones aside)
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]
                 if p.name not in ("units.py", "__init__.py") and not p.is_symlink())
README = (ROOT / "README.md").read_text()
TEST_COMMAND = 'python -m pip install -e ".[test]" && python -m pytest'


@pytest.fixture(scope="module")
def helps():
    """Each script's --help as a user runs it, a fresh process each, four at a time."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(zip(SCRIPTS, pool.map(lambda script: run_script(script, "--help", timeout=300), SCRIPTS)))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script, helps):
    result = helps[script]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_version_with_the_bare_version(script, capsys):
    """As workflow managers read it (nf-core modules' versions.yml); pyproject takes it from the package."""
    with pytest.raises(SystemExit) as exit_status:
        importlib.import_module(Path(script).stem).main(["--version"])
    assert exit_status.value.code == 0 and capsys.readouterr().out == f"{virnucpro.__version__}\n"
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "virnucpro.__version__"}


def test_the_installed_command_runs_the_scripts(models, tmp_path):
    """virnucpro on the PATH of this environment (pip install -e puts it there): --version, and predict
    writing what python prediction.py writes."""
    virnucpro_command = Path(sys.executable).parent / "virnucpro"
    version = subprocess.run([virnucpro_command, "--version"], capture_output=True, text=True)
    assert version.stdout == f"{virnucpro.__version__}\n"
    assert run_script("prediction.py", "--version").stdout == f"{virnucpro.__version__}\n"
    args = predict_args(models, tmp_path / "command", input_fasta=ROOT / "data/sample.fasta")
    by_command = subprocess.run([virnucpro_command, "predict", *args], capture_output=True, text=True, cwd=tmp_path)
    assert by_command.returncode == 0, by_command.stderr
    assert "usage: virnucpro predict" in subprocess.run([virnucpro_command, "predict", "--help"],
                                                         capture_output=True, text=True).stdout
    assert prediction.main(predict_args(models, tmp_path / "script", input_fasta=ROOT / "data/sample.fasta")) == 0
    for name in RESULT_FILES:
        assert (tmp_path / "command" / name).read_bytes() == (tmp_path / "script" / name).read_bytes(), name


def test_the_command_alone_lists_its_steps(capsys):
    with pytest.raises(SystemExit) as stop:
        command.main([])
    shown = capsys.readouterr().err
    assert stop.value.code == 2 and "[-h] [--version] STEP" in shown and "predict, summarize-samples" in shown


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
    assert any(line.endswith('/bin/python -m pytest -m "slow or not slow"') for line in ci_commands[:-1])


def installed_sources() -> set[str]:
    """What pip install reads: the card, the package, the scripts' folder and the files its links point to."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    linked = {path.resolve().name for path in (ROOT / "scripts").iterdir() if path.is_symlink()}
    return {"units.py", *(name.split(".")[0] for name in setuptools["packages"]["find"]["include"]),
            *setuptools["package-dir"].values(), *linked}


PIXI = tomllib.loads((ROOT / "pixi.toml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


class Parsed(Exception):
    """Raised by a script's argument parser, carrying it, before the script does anything."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def parser_of(script: str) -> argparse.ArgumentParser:
    module = importlib.import_module(Path(script).stem)

    def caught(parser, args=None, namespace=None):
        raise Parsed(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught), pytest.raises(Parsed) as parsed:
        module.main([])
    return parsed.value.parser


def check_command(words: list[str], where: str) -> None:
    """``python <script> [arguments]``: the script exists, and takes every option given, with its value."""
    assert words[0] == "python", where
    if words[1:3] == ["-m", "pytest"]:
        return
    script, arguments = words[1], words[2:]
    assert (ROOT / script).is_file(), f"{where} names missing {script}"
    parser = parser_of(script)
    options = parser._option_string_actions
    k = 0
    while k < len(arguments):
        word = arguments[k]
        if word.startswith("-"):
            assert word in options, f"{where}: {script} has no option {word}"
            action = options[word]
            if action.nargs != 0:
                value = (action.type or str)(arguments[k + 1])
                assert action.choices is None or value in action.choices, f"{where}: {word} {value}"
                k += 1
        k += 1
    required = [action for action in parser._actions if not action.option_strings and action.nargs is None]
    if len([word for word in arguments if not word.startswith("-")]) >= len(required) > 0:
        parser.parse_args(arguments)                     # a complete command line parses as a whole


# Spellings replaced by one name for one idea (an old one may stay as a hidden alias: no help, not documented).
RETIRED = {"--out", "--report-dir", "--toks-per-batch", "--fastesm-model", "--esm2-3b-model", "--model",
           "--baseline-model", "--nproc_per_node", "--output_dir"}
# Options that mean the same in every script that takes them: one declaration (virnucpro/commands/options.py).
SHARED = ("--device", "--models-dir", "--dna-model", "--protein-model", "--baseline-protein-model", "--dna-fp32",
          "--dna-batch-tokens", "--protein-batch-tokens", "--merge-dir", "--baseline-merge-dir", "--split")
COMMAND = re.compile(r"(?:^|\s)((?:scripts/)?\w+\.py)((?:\s+(?![#|&;\\])\S+)*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, script, arguments)`` of every command line in README, docs/, reports/ and the scripts' own
    docstrings: code blocks and inline code."""
    found = []
    texts = {path.relative_to(ROOT): path.read_text() for path in
             [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("reports/*.md")]}
    texts.update({Path(script): importlib.import_module(Path(script).stem).__doc__ or "" for script in SCRIPTS})
    for where, text in texts.items():
        blocks = re.findall(r"```\w*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        if str(where).endswith(".py"):                        # a docstring: its usage lines
            blocks = [line for line in text.splitlines() if line.strip().startswith(("python ", "torchrun ", "sbatch "))]
        for block in blocks:
            for line in block.splitlines():
                for script, arguments in COMMAND.findall(line.split(" #")[0]):
                    if script in SCRIPTS:
                        found.append((f"{where}: {line.strip()}", script,
                                      arguments.replace('"', " ").replace("'", " ").split()))
    return found


def test_one_name_for_one_idea_in_every_script_and_doc():
    parsers = {script: parser_of(script) for script in SCRIPTS}
    shared: dict[str, set] = {}
    for script, parser in parsers.items():
        visible = {option for action in parser._actions if action.help != argparse.SUPPRESS
                   for option in action.option_strings}
        assert not visible & RETIRED, f"{script}: {visible & RETIRED}"
        if "-o" in visible:
            assert parser._option_string_actions["-o"].option_strings == ["-o", "--output-dir"], script
        for option in set(SHARED) & visible:
            action = parser._option_string_actions[option]
            shared.setdefault(option, set()).add((action.help, action.default))
    assert {option: len(found) for option, found in shared.items()} == {option: 1 for option in shared}
    texts = {str(path.relative_to(ROOT)): path.read_text() for path in [
        ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("reports/*.md"), ROOT / "pixi.toml",
        ROOT / "docker-compose.yml"]}
    texts.update({script: importlib.import_module(Path(script).stem).__doc__ for script in SCRIPTS})
    for where, text in texts.items():
        retired = [name for name in RETIRED if re.search(rf"(?<![\w-]){name}\b(?!-)", text)]
        assert not retired, f"{where} still says {retired}"
    commands = documented_commands()
    assert len(commands) > 40
    for where, script, arguments in commands:
        assert not set(arguments) & RETIRED, where
        known = parsers[script]._option_string_actions
        for word in arguments:
            if word.startswith("-") and len(word) > 1 and not word.lstrip("-").isdigit():
                assert word.split("=")[0] in known, f"{where}: {script} has no option {word}"


def test_pixi_tasks_and_compose_services_are_the_same_steps():
    tasks = {name: shlex.split(command) for name, command in PIXI["tasks"].items()}
    services = {name: service["entrypoint"] for name, service in COMPOSE["services"].items()}
    assert tasks == services                             # same names, same commands, extra arguments appended
    for name, words in tasks.items():
        check_command(words, f"pixi task / compose service {name}")
    predict = COMPOSE["services"]["predict"]
    check_command(predict["entrypoint"] + predict["command"], "compose service predict with its default arguments")
    assert tasks["test"] == ["python", "-m", "pytest"]


def test_the_recipe_writes_where_the_next_step_reads():
    """Each step's default output is the next step's default input, and in a folder compose mounts."""
    import evaluate_compare
    import features_extract
    import train_fastesm

    mounted = {volume.split(":")[1].removeprefix("/app/") for volume in COMPOSE["x-virnucpro"]["volumes"]
               if volume.startswith("./")}
    extraction = features_extract.parse_args([])
    training = train_fastesm.parse_args([])
    evaluation = evaluate_compare.parse_args([])
    assert training.merge_dir == extraction.merge_dir and evaluation.merge_dir == extraction.merge_dir
    assert parser_of("scripts/create_test_set.py").get_default("output") == training.split == evaluation.split
    for path in (extraction.merge_dir, training.split, evaluation.work_dir):
        assert path.split("/")[0] in mounted, path
    from virnucpro.scoring.checkpoints import TRAINED_DIR
    assert training.output is None and evaluation.checkpoint is None and TRAINED_DIR in mounted


def test_pins_agree_everywhere():
    torch_pin = PIXI["pypi-dependencies"]["torch"]
    assert f"pip install --no-cache-dir torch{torch_pin}" in (ROOT / "Dockerfile").read_text()
    assert f"pip install torch{torch_pin}" in (ROOT / ".ci/run").read_text()
    assert PIXI["pypi-dependencies"]["virnucpro"]["path"] == "."          # the rest from pyproject
    assert "torch>=2.4" in PYPROJECT["project"]["dependencies"]           # admits the pin


class ComposeLoader(yaml.SafeLoader):
    """Compose files as Docker Compose reads them: ``!reset`` clears a key of the file before."""


ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def test_docker_builds_the_package_for_gpu_and_cpu_hosts_and_sends_no_data():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M) == [("python:3.12-slim", "runtime"),
                                                                       ("runtime", "test")]  # one CUDA stack
    runtime, test_stage = dockerfile.split("FROM runtime AS test")
    assert '".[test]"' in test_stage and '".[test]"' not in runtime         # the image users run has no tests
    assert re.findall(r"^USER (\S+)$", runtime, re.M)[-1] == "virnucpro"      # results not owned by root
    assert "HF_HOME=/cache/huggingface" in dockerfile and "VIRNUCPRO_MODELS=/app/models" in dockerfile
    before_install = runtime[:runtime.index("pip install --no-cache-dir .")]
    copied = {name.rstrip("/") for line in re.findall(r"^COPY (.*) \S+$", before_install, re.M) for name in line.split()}
    assert installed_sources() <= copied                     # the install needs what pyproject installs
    for name, service in COMPOSE["services"].items():
        assert service["build"]["context"] == "." and service["build"].get("target", "runtime") == \
            ("test" if name == "test" else "runtime")
        assert "hf-cache:/cache/huggingface" in service["volumes"] and "./models:/app/models" in service["volumes"]
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    cpu = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=ComposeLoader)
    assert set(cpu["services"]) == set(COMPOSE["services"])                   # every step, on a CPU host
    for name, service in cpu["services"].items():
        assert service["deploy"] == "!reset" and service["image"].startswith("virnucpro:cpu")
        assert service["build"]["args"]["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"models", "data/*", "!data/sample.fasta", ".git"} <= set(ignored)


