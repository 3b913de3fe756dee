"""The bad-input catalogue of every script but prediction (tests/test_bad_input.py has prediction's):
extraction, training, split, evaluation, fetching, plotting and the training frames.

Each row: the situation, the script, what prepares it in a temporary folder (returning the script's
arguments), the words of the one line it must give, and what must exist and what must not afterwards
(paths relative to the temporary folder). Each case runs through the real command-line runner: exit
status 2, no traceback, and one ``error:`` line (argparse's own ``usage`` and ``error`` lines for an
argument it refuses)."""
import gzip
import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import GOLDEN
from virnucpro.models.pins import MERGED_DIM

TRAIN = GOLDEN / "train300"


def unwritable(tmp: Path) -> Path:
    """A folder this process may not write into (root writes anywhere: take one the kernel keeps read-only)."""
    if os.geteuid() == 0:
        return Path("/sys/virnucpro_out")
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


def merged_features(folder: Path, accessions: int = 6) -> Path:
    """A merge folder of separable random features, a viral and a host file, as features_extract.py writes."""
    rng = torch.Generator().manual_seed(0)
    for label, stem in ((1, "viral.1.1"), (0, "bacteria.1.1")):
        ids = [f"{stem}_ACC{a}.1_chunk_{c}F1" for a in range(accessions) for c in range(1, 6)]
        data = torch.randn(len(ids), MERGED_DIM, generator=rng) + (1.0 if label else -1.0)
        (folder / f"{stem}_merged").mkdir(parents=True)
        torch.save({"ids": ids, "data": data, "labels": [label], "chunk_length": 300},
                   folder / f"{stem}_merged/output_1_merged.pt")
    return folder


def genome_pair(tmp: Path, gbff: bytes | None = None, fna: bytes | None = None) -> Path:
    """The golden training genomes as data/, their GenBank or FASTA file replaced when given."""
    data = tmp / "data"
    data.mkdir()
    (data / "genomes.genomic.gbff.gz").write_bytes(gbff if gbff is not None else
                                                   (TRAIN / "genomes.genomic.gbff.gz").read_bytes())
    (data / "genomes.genomic.fna.gz").write_bytes(fna if fna is not None else
                                                  (TRAIN / "genomes.genomic.fna.gz").read_bytes())
    return data


def genbank_text() -> str:
    return gzip.decompress((TRAIN / "genomes.genomic.gbff.gz").read_bytes()).decode()


def pair_case(**files):
    return lambda tmp, models: ["--length", "300", "--data-dir", str(genome_pair(tmp, **files))]


def other_versions() -> bytes:
    text = gzip.decompress((TRAIN / "genomes.genomic.fna.gz").read_bytes()).decode()
    return gzip.compress(text.replace(".1 synthetic", ".2 synthetic").encode())


def bundle_with_member(name: str, manifest_of=lambda name, sha256: {name: sha256}):
    """A bundle whose one member, listed in its manifest (``manifest_of(name, sha256)``) with the right hash,
    is ``name``."""
    def prepare(tmp, models):
        content = b"not a model"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            import hashlib
            manifest = json.dumps(manifest_of(name, hashlib.sha256(content).hexdigest())).encode()
            for member, data in (("manifest.json", manifest), (name, content)):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (tmp / "evil.tar").write_bytes(buffer.getvalue())
        (tmp / "models/classifiers").mkdir(parents=True)
        (tmp / "models/classifiers/mine.pth").write_bytes(b"a trained classifier")
        return ["--models-dir", str(tmp / "models"), "--from-bundle", str(tmp / "evil.tar")]
    return prepare


def results_folder(tmp: Path) -> Path:
    shutil.copy(GOLDEN / "reference_vanilla/prediction_results.txt", tmp)
    return tmp / "prediction_results.txt"


def identified(tmp: Path, frames: dict[str, int]) -> Path:
    """Identified frame files as scripts/make_train_dataset.py writes them: ``{stem: frames}``."""
    for stem, count in frames.items():
        for suffix, residues in ((".identified_nucleotide.fa", "ACGTACGTAC"), (".identified_protein.fa", "MKV")):
            (tmp / f"{stem}{suffix}").write_text("".join(f">{stem}_{k}F1\n{residues}\n" for k in range(count)))
    return tmp


IDENTIFIED = ["data/genomes.identified_nucleotide.fa", "data/genomes.identified_protein.fa",
              "data/genomes.identified.json"]
#        situation, script, prepare(tmp, models) -> arguments, words, must exist, must not exist
CASES = [
    # ---- features_extract.py
    ("merge folder that cannot be written", "features_extract",
     lambda tmp, models: ["--data-dir", str(tmp), "--merge-dir", str(unwritable(tmp))],
     "the features cannot be written there", [], []),
    ("no identified files", "features_extract", lambda tmp, models: ["--data-dir", str(tmp)],
     "no *.identified_nucleotide.fa files; run scripts/make_train_dataset.py", [], ["data_merge"]),
    ("identified files of one's own named without a category", "features_extract",
     lambda tmp, models: ["--data-dir", str(identified(tmp, {"myphages": 5, "mygut": 5}))],
     "mygut.identified_nucleotide.fa: unknown category 'mygut' (a file's category is the first word of its "
     "name: viral, or a host category", [], ["data_merge"]),
    ("no host files", "features_extract", lambda tmp, models: ["--data-dir", str(identified(tmp, {"viral.1": 5}))],
     "no host file (<host category>.*.identified_nucleotide.fa", [], ["data_merge"]),
    ("a small data set and the published split size", "features_extract",
     lambda tmp, models: ["--data-dir", str(identified(tmp, {"viral.1": 40, "viral.2": 70, "bacteria.1": 90}))],
     "viral.2.identified_nucleotide.fa: 70 frames, the most of the 2 viral files; only split files of exactly "
     "--sequences-per-file (10000) frames are used, as published, so there is no full viral file: give "
     "--sequences-per-file 70 or less", [], ["data_merge"]),
    ("--sequences-per-file 0", "features_extract", lambda tmp, models: ["--sequences-per-file", "0"],
     "argument --sequences-per-file: 0 is below 1", [], []),
    # ---- train_fastesm.py
    ("--epochs 0", "train_fastesm", lambda tmp, models: ["--epochs", "0"], "argument --epochs: 0 is below 1",
     [], []),
    ("--lr -1", "train_fastesm", lambda tmp, models: ["--lr", "-1"], "argument --lr: -1 is not greater than 0",
     [], []),
    ("--batch-size 0", "train_fastesm", lambda tmp, models: ["--batch-size", "0"],
     "argument --batch-size: 0 is below 2", [], []),
    ("--output in a folder that cannot be written", "train_fastesm",
     lambda tmp, models: ["--merge-dir", str(merged_features(tmp / "merge")), "--output", str(unwritable(tmp))],
     "the classifier cannot be written there", [], []),
    ("--output of a folder not made yet, and a split that is not there", "train_fastesm",
     lambda tmp, models: ["--merge-dir", str(merged_features(tmp / "merge")), "--output", str(tmp / "new/model.pth"),
                          "--split", str(tmp / "split.json")],
     "split.json: no such split file; run scripts/create_test_set.py first", [], ["new/model.pth"]),
    # ---- scripts/create_test_set.py
    ("split file that cannot be written", "create_test_set",
     lambda tmp, models: ["--merge-dir", str(merged_features(tmp / "merge")),
                          "--output", str(unwritable(tmp) / "split.json")], "the split cannot be written there",
     [], []),
    ("a data set too small to hold out a record of each class", "create_test_set",
     lambda tmp, models: ["--merge-dir", str(merged_features(tmp / "merge", accessions=1)), "--group-by", "record",
                          "--output", str(tmp / "split.json")],
     "the split has no viral test rows (5 viral rows in 1 group by record), so nothing could be measured on it; "
     "give more genomes of that class", [], ["split.json"]),
    ("--test-fraction 1.5", "create_test_set", lambda tmp, models: ["--test-fraction", "1.5"],
     "argument --test-fraction: 1.5 is not between 0 and 1", [], []),
    # ---- scripts/evaluate_compare.py
    ("report folder that cannot be written", "evaluate_compare",
     lambda tmp, models: ["--output-dir", str(unwritable(tmp)), "--frames-only"],
     "the report cannot be written there", [], []),
    # ---- scripts/fetch_models.py
    ("--from-bundle a folder", "fetch_models",
     lambda tmp, models: ["--models-dir", str(tmp / "models"), "--from-bundle", str(tmp)],
     "a folder; --from-bundle takes the .tar file", [], []),
    ("--from-bundle a missing file", "fetch_models",
     lambda tmp, models: ["--models-dir", str(tmp / "models"), "--from-bundle", str(tmp / "models.tar")],
     "models.tar: no such file; --from-bundle takes", [], []),
    ("a bundle member ./x", "fetch_models", bundle_with_member("./x"),
     "./x is not a file of a pinned model or classifier", ["models/classifiers/mine.pth"], []),
    ("a bundle member of no pinned model", "fetch_models", bundle_with_member("classifiers/mine.pth"),
     "classifiers/mine.pth is not a file of a pinned model or classifier", ["models/classifiers/mine.pth"], []),
    ("a bundle whose manifest is a list", "fetch_models",
     bundle_with_member("dnabert-s/config.json", lambda name, sha256: [name, sha256]),
     "evil.tar: not a readable bundle of scripts/fetch_models.py (its manifest is not a table of files)",
     ["models/classifiers/mine.pth"], []),
    ("--models-dir a file", "fetch_models",
     lambda tmp, models: ["--models-dir", str(shutil.copy(TRAIN / "genomes.genomic.fna.gz", tmp / "models"))],
     "the models folder (--models-dir) is a file, not a folder", [], []),
    # ---- scripts/plot_predictions.py
    ("plot that cannot be written", "plot_predictions",
     lambda tmp, models: [str(results_folder(tmp)), "--output", str(unwritable(tmp) / "plot.png")],
     "the plot cannot be written there", [], []),
    ("results that are not there", "plot_predictions", lambda tmp, models: [str(tmp / "prediction_results.txt")],
     "prediction_results.txt: no such file", [], ["prediction.png"]),
    # ---- scripts/make_train_dataset.py: a pair that yields nothing is never marked done
    ("empty GenBank file", "make_train_dataset", pair_case(gbff=gzip.compress(b"")),
     "genomes.genomic.gbff.gz: not a GenBank file (empty; GenBank records begin with LOCUS)", [], IDENTIFIED),
    ("FASTA given as the GenBank file", "make_train_dataset",
     pair_case(gbff=(TRAIN / "genomes.genomic.fna.gz").read_bytes()),
     "not a GenBank file (its first line is '>NC_9001.1 synthetic genome'", [], IDENTIFIED),
    ("GenBank of other versions than the FASTA", "make_train_dataset", pair_case(fna=other_versions()),
     "none of its 4 records is in", [], IDENTIFIED),
    ("truncated gzip GenBank", "make_train_dataset",
     pair_case(gbff=(TRAIN / "genomes.genomic.gbff.gz").read_bytes()[:3000]),
     "not a readable GenBank file, or a damaged compressed one", [], IDENTIFIED),
    ("malformed CDS location", "make_train_dataset",
     pair_case(gbff=gzip.compress(genbank_text().replace("CDS             152..616", "CDS             152..6x16",
                                                         1).encode())),
     "GenBank record 1 cannot be read (a malformed feature location)", [], IDENTIFIED),
    # ---- scripts/validate_features.py: the folder of the pipeline asked for
    ("--pipeline esm2_3b without a folder", "validate_features",
     lambda tmp, models: (os.chdir(tmp), ["--pipeline", "esm2_3b"])[1],
     "data/data_merge_esm2_3b: no such folder", [], []),
]


@pytest.mark.parametrize("name, script, prepare, words, exist, absent", CASES, ids=[case[0] for case in CASES])
def test_a_mistake_gives_one_line_and_leaves_the_folder_right(name, script, prepare, words, exist, absent, models,
                                                              tmp_path, cli):
    status, stderr = cli(script, prepare(tmp_path, models))
    assert status == 2 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1 and words in errors[0], stderr
    for path in exist:
        assert (tmp_path / path).exists(), path
    for path in absent:
        assert not (tmp_path / path).exists(), path


def test_a_genome_pair_with_records_missing_from_its_genbank_file_is_counted(tmp_path, caplog):
    """Some records without their GenBank record: built, warned with counts, and the last line says so."""
    import make_train_dataset

    caplog.set_level(logging.INFO, logger="virnucpro")
    text = genbank_text()
    second = text.index("LOCUS", 1)
    data = genome_pair(tmp_path, gbff=gzip.compress(text[second:].encode()))       # the first record left out
    assert make_train_dataset.main(["--length", "300", "--data-dir", str(data), "--workers", "1"]) == 0
    manifest = json.loads((data / "genomes.identified.json").read_text())
    assert manifest["without_genbank"] == {"records": 1, "first": ["NC_9001.1"]}
    assert "1 of 4 records have no record in" in caplog.text
    assert "1 FASTA record without their GenBank record, in 1 pair " in caplog.text.splitlines()[-1]
