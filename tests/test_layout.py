"""The layout's contracts: units.py is the card and nothing else; the package is a few basic modules
and a sub-package per concern, each importing only the ones below it; nothing in the package imports
units or a script, and no script or test reaches past the card through units; docs/layout.md names
every module; installing puts units, the package and the steps' scripts in site-packages, and the
virnucpro command on the PATH."""
import ast
import re
import shutil
import subprocess
import sys
import types

try:
    import tomllib
except ModuleNotFoundError:       # Python 3.10
    import tomli as tomllib

import command
import units
from conftest import ROOT
from virnucpro.sequences.fasta import FastaRecord

PACKAGE = ROOT / "virnucpro"
SCRIPTS = {path.stem for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]} - {"units", "__init__"}
# The sub-packages from the bottom up: each imports only the basic modules (the package's top level),
# itself and the ones before it.
GROUPS = ("sequences", "models", "scoring", "prediction", "training", "commands")
CARD = {"extract_DNABERT_S", "extract_fast_esm", "extract_esm", "extract_protein", "merge_data", "MLPClassifier",
        "save_checkpoint", "load_checkpoint", "load_dnabert_s", "load_fast_esm", "load_esm2_3b"}
# The published units.py (Li et al. 2025): every name it defined.
PUBLISHED = {"split_fasta_chunk", "create_refseq_pro_list", "reverse_complement", "translate_dna", "seq_in_reflist",
             "identify_seq", "process_record", "extract_DNABERT_S", "extract_esm", "split_fasta_file", "merge_data"}
# The card's functions that units.py defines itself (the others are the package's, under their published names).
DEFINED_HERE = {"extract_DNABERT_S", "extract_fast_esm", "extract_esm", "extract_protein", "merge_data",
                "MLPClassifier", "save_checkpoint", "load_checkpoint", "split_fasta_chunk", "create_refseq_pro_list",
                "seq_in_reflist", "identify_seq", "process_record"}


def package_modules() -> dict[str, object]:
    """``virnucpro.<group>.<module>`` (or ``virnucpro.<module>`` for a basic one) -> its path."""
    return {".".join(path.relative_to(ROOT).with_suffix("").parts): path for path in PACKAGE.rglob("*.py")
            if path.stem != "__init__"}


def imported_modules(path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too); for ``from a import b``, both
    ``a`` and ``a.b`` (b may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path.name}: relative import (the package imports absolutely)"
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def group_of(module: str) -> int:
    """0 for a basic module, else 1 + the place of its sub-package in GROUPS."""
    parts = module.split(".")
    return 0 if len(parts) == 2 else 1 + GROUPS.index(parts[1])


def test_units_is_the_card_alone():
    public = {name for name, value in vars(units).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)} - {"annotations"}
    assert public == set(units.__all__) == CARD | PUBLISHED
    assert {name for name in public if getattr(units, name).__module__ == "units"} == DEFINED_HERE


def test_the_published_helpers_behave_as_published():
    assert units.seq_in_reflist("MKV", ["AAMKVL", "GG"]) and not units.seq_in_reflist("MKW", ["AAMKVL"])
    chunk = "ATGAAAGTTTTAGGGCCCTTTAAACCC"
    record = FastaRecord("NC_1.1_chunk_1", "NC_1.1_chunk_1", chunk.lower(), 1, 1)
    assert units.process_record(7, record) == (7, units.identify_seq("NC_1.1_chunk_1", chunk))
    biopython_like = types.SimpleNamespace(id="NC_1.1_chunk_1", seq=chunk)
    assert units.process_record(2, biopython_like, ["MKVLGPFKP"], istraindata=True) == \
        (2, units.identify_seq("NC_1.1_chunk_1", chunk, ["MKVLGPFKP"], istraindata=True))


def test_no_script_or_test_reaches_past_the_card():
    """A name of the package is imported from its module, never through units."""
    allowed = set(units.__all__) | {"__all__"}
    for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "units":
                assert node.attr in allowed, f"{path.relative_to(ROOT)}:{node.lineno}: units.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module == "units":
                assert {alias.name for alias in node.names} <= allowed, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_each_group_imports_only_the_groups_below_it():
    modules = package_modules()
    for module, path in modules.items():
        for imported in imported_modules(path):
            if imported.split(".")[0] in SCRIPTS | {"units"} or imported.startswith("virnucpro.scripts"):
                raise AssertionError(f"{module} imports {imported}")
            if imported in modules:
                assert group_of(imported) <= group_of(module), f"{module} imports {imported}, from a group above"


def test_the_package_has_no_import_cycle():
    modules = package_modules()
    graph = {name: {m for m in imported_modules(path) if m in modules} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            assert state.get(imported) != "open", " -> ".join([*path, module, imported])
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_top_level_is_the_basics_and_the_rooms():
    basics = [path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"]
    assert len(basics) <= 10, basics
    assert sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__") == \
        sorted(GROUPS)
    for group in GROUPS:
        assert len(list((PACKAGE / group).glob("*.py"))) <= 11, group


def test_docs_layout_names_every_module():
    """docs/layout.md has a row per room, naming each of its modules (`module`) and no other."""
    rows = {}
    for line in (ROOT / "docs/layout.md").read_text().splitlines():
        found = re.match(r"\| `(?:virnucpro/)?(\w*)/?` \|([^|]*)\|", line)
        if found:
            rows[found.group(1) or "virnucpro"] = set(re.findall(r"`(\w+)`", found.group(2)))
    expected: dict[str, set[str]] = {}
    for module in package_modules():
        parts = module.split(".")
        expected.setdefault("virnucpro" if len(parts) == 2 else parts[1], set()).add(parts[-1])
    assert rows == expected


def test_modules_stay_chapters():
    """The card, the main script and each module of the package stay readable as a whole."""
    assert len((ROOT / "units.py").read_text().splitlines()) <= 700
    assert len((ROOT / "prediction.py").read_text().splitlines()) <= 400
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path.name


def test_installing_puts_units_the_package_and_the_steps_in_site_packages(tmp_path):
    """pip install --target of a copy of the repository (so that the build writes nothing into it): the
    package, the steps' scripts as virnucpro.scripts (the three at the top through their links), the command;
    no benchmark."""
    source = tmp_path / "source"
    skipped = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build")

    def ignored(folder, names):       # and the repository's own data and models folders
        return skipped(folder, names) | ({"data", "models"} & set(names) if folder == str(ROOT) else set())

    shutil.copytree(ROOT, source, ignore=ignored, symlinks=True)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
                    str(target), str(source)], check=True, capture_output=True)
    installed = sorted(path.name for path in target.iterdir())
    assert installed[:3] == ["bin", "units.py", "virnucpro"] and len(installed) == 4
    assert installed[3].startswith("virnucpro-") and installed[3].endswith(".dist-info")
    assert [path.name for path in (target / "bin").iterdir()] == ["virnucpro"]
    steps = {f"scripts/{name}.py" for name in ["__init__", "command", *command.STEPS.values()]}
    assert sorted(str(path.relative_to(target / "virnucpro")) for path in (target / "virnucpro").rglob("*.py")) == \
        sorted([*(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")), *steps])
    for name in ("prediction", "features_extract", "train_fastesm"):         # the file, not a link
        assert (target / f"virnucpro/scripts/{name}.py").read_bytes() == (ROOT / f"{name}.py").read_bytes()


def test_every_step_is_a_script_of_the_command():
    """The command's steps are the scripts but the benchmarks, each installed (pyproject's list)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = {name.rsplit(".", 1)[1] for name in pyproject["tool"]["setuptools"]["py-modules"]
               if name.startswith("virnucpro.scripts.")}
    assert modules == {*command.STEPS.values(), "command"}
    assert set(command.STEPS.values()) == {name for name in SCRIPTS if not name.startswith("benchmark")} - {"command"}
    assert {path.name for path in (ROOT / "scripts").iterdir() if path.is_symlink()} == {
        "prediction.py", "features_extract.py", "train_fastesm.py"}


# The torch functions tests may stand in for, and why each stand-in is strict: the lowest calls a GPU needs,
# which refuse what the real ones refuse (conftest.cuda_machine), and wrappers that call torch's own.
STRICT_TORCH_STAND_INS = {
    ("torch._C", "_cuda_getDeviceCount"): "conftest.cuda_machine: the CUDA runtime's count",
    ("torch._C", "_cuda_setDevice"): "conftest.cuda_machine: refuses a non-int or an absent GPU, as CUDA does",
    ("torch.cuda", "_raw_device_count_nvml"): "conftest.cuda_machine: NVML's count",
    ("torch.version", "cuda"): "a value, not a function",
    ("torch.Tensor", "name"): "test_engine.host_waits: counts, then calls torch's own",
    ("torch.Tensor", "to"): "test_engine.host_waits: counts, then calls torch's own",
    ("functional", "scaled_dot_product_attention"): "test_engine.attention_calls: records, then calls torch's own",
}


def test_tests_stand_in_for_torch_only_where_the_stand_in_is_strict():
    """A stand-in that accepts what torch refuses turned a crash into a green test once (set_device)."""
    found = set()
    for path in ROOT.glob("tests/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr" \
                    and len(node.args) >= 2 and isinstance(node.args[1], (ast.Constant, ast.Name)):
                target, attribute = ast.unparse(node.args[0]), node.args[1]
                name = attribute.value if isinstance(attribute, ast.Constant) else attribute.id
                if target.startswith(("torch", "functional")):
                    found.add((target, name))
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("mock.patch") and node.args \
                    and "torch" in ast.unparse(node.args[0]):
                found.add((ast.unparse(node.args[0]), "patch"))
    assert found <= set(STRICT_TORCH_STAND_INS), found - set(STRICT_TORCH_STAND_INS)
