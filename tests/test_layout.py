"""The layout's contracts: units.py is the card and keeps every public name it
had; each other part is a module of the package; imports flow one way (no
cycle, nothing in the package imports units or a script); installing puts
only units and the package in site-packages."""
import ast
import shutil
import subprocess
import sys

import units
from conftest import ROOT

PACKAGE = ROOT / "virnucpro"
SCRIPTS = {path.stem for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]} - {"units"}
CARD = ("extract_DNABERT_S", "extract_fast_esm", "merge_data", "MLPClassifier")
# Every public name of units.py before the package existed (the published ones and this project's own).
PUBLISHED = """
logger InputError DNA_DIM PROTEIN_DIM MERGED_DIM ESM2_3B_DIM DimensionError READ_ERRORS open_raw open_binary
open_text atomic_write current_umask LOCK_FILE LOCK_POLL_SECONDS folder_lock warn_once setup_logging run_cli
rare_garbage_collection IUPAC_NUCLEOTIDES PROTEIN_LETTERS FastaRecord read_fasta write_fasta_record split_fasta_file
chunk_starts iter_chunks split_fasta_chunk CODON_TABLE AMBIGUOUS_BASES reverse_complement translate_dna ProteinIndex
has_ambiguous_base FRAME_NAMES StopFreeFrames stop_free_frames select_frames identify_seq read_genbank
create_refseq_pro_list IdentifiedWriter batched iter_fasta_chunks ModelSpec PublishedClassifier DNABERT_S
FASTESM2_650 ESM2_3B CLASSIFIER_300 CLASSIFIER_500 ARTIFACTS MODELS_ENV DEFAULT_MODELS_DIR CLASSIFIERS models_dir
ESM2_ALPHABET resolve_device model_folder model_fingerprint file_sha256 git_blob_sha1 weight_files verify_weights
dtype_name load_dnabert_s esm_tokenizer load_fast_esm load_esm2_3b FAILURE_LOG DNA_TOKS_PER_BATCH model_precision
log_failures save_dna_features save_protein_features extract_DNABERT_S extract_fast_esm extract_esm Pipeline
PIPELINES extract_protein LABELS merge_data load_merged_file find_merged_files accession_of FeatureSet
CHECKPOINT_VERSION HIDDEN_DIM NUM_CLASSES CLASS_NAMES MLPClassifier save_checkpoint default_classifier
install_classifier default_checkpoint_path PUBLISHED_BY_BLOB checkpoint_pipeline load_checkpoint
predict_probabilities CALIBRATION_FORMAT calibration_path Calibration save_calibration load_calibration
false_discovery_rates ViralRegion viral_regions plot_chunk_scores
""".split()


def imported_modules(path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too), package-relative ones as
    ``virnucpro.<name>``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # from .x import y / from . import x, y
                found |= {f"virnucpro.{node.module}"} if node.module else \
                    {f"virnucpro.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
                if node.module == "virnucpro":
                    found |= {f"virnucpro.{alias.name}" for alias in node.names}
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {f"virnucpro.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: {m for m in imported_modules(path) if m in modules} for name, path in modules.items()}


def test_units_defines_the_card_and_keeps_every_public_name():
    for name in CARD:
        assert getattr(units, name).__module__ == "units", name
    missing = [name for name in PUBLISHED if not hasattr(units, name)]
    assert not missing
    assert units.accession_of("NC_1.1_chunk_3F2") == "NC_1.1"


def test_nothing_in_the_package_imports_units_or_a_script():
    for path in PACKAGE.glob("*.py"):
        wrong = {module.split(".")[0] for module in imported_modules(path)} & (SCRIPTS | {"units"})
        assert not wrong, f"{path.name} imports {wrong}"


def test_the_package_has_no_import_cycle():
    graph = package_graph()
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


def test_modules_stay_chapters():
    """The card, the main script and each module of the package stay readable as a whole."""
    assert len((ROOT / "units.py").read_text().splitlines()) <= 700
    assert len((ROOT / "prediction.py").read_text().splitlines()) <= 400
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path.name


def test_installing_puts_only_units_and_the_package_in_site_packages(tmp_path):
    """pip install --target of a copy of the repository (so that the build writes nothing into it)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info",
                                                                "build", "data", "models"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), str(source)], check=True, capture_output=True)
    installed = sorted(path.name for path in target.iterdir())
    assert installed[:2] == ["units.py", "virnucpro"] and len(installed) == 3
    assert installed[2].startswith("virnucpro-") and installed[2].endswith(".dist-info")
    assert sorted(path.name for path in (target / "virnucpro").iterdir()) == \
        sorted(path.name for path in PACKAGE.glob("*.py"))
