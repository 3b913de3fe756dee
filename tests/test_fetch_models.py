"""scripts/fetch_models.py and prediction without a checkpoint, against a local
server on 127.0.0.1 standing in for the Hugging Face hub and GitHub (tiny
models; no test touches the internet)."""
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import fetch_models as fetch_script
import prediction
import units
from conftest import ROOT
from virnucpro.errors import InputError
from virnucpro.models import fetching as fetcher
from virnucpro.models.modelfiles import model_folder
from virnucpro.models.pins import (
    ARTIFACTS,
    CLASSIFIER_300,
    CLASSIFIER_500,
    DNABERT_S,
    ESM2_3B,
    FASTESM2_650,
    MERGED_DIM,
    MODELS_ENV,
)
from virnucpro.scoring import checkpoints
from virnucpro.scoring.checkpoints import install_classifier

FASTESM_COMMIT = "fa57e5" + "0" * 34                 # what the hub says main is


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="virnucpro")


def folder_files(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def git_blob(content: bytes) -> str:
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()


class Sources:
    """The hub (model listings with sizes and LFS SHA-256, file downloads with
    ranges) and GitHub's blob API, serving the tiny models and classifiers."""

    def __init__(self, repos, blobs):
        self.repos, self.blobs = repos, blobs          # {repo: (revision, commit, {name: bytes})}, {sha: bytes}
        self.requests, self.cut_once, self.wrong_hash = [], set(), set()
        sources = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                sources.requests.append((self.path, self.headers.get("Range")))
                path = self.path.split("?")[0]
                for repo, (revision, commit, files) in sources.repos.items():
                    if path == f"/api/models/{repo}/revision/{revision}":
                        return self.send(json.dumps({"sha": commit, "siblings": [sources.sibling(name, content)
                                                     for name, content in files.items()]}).encode())
                    prefix = f"/{repo}/resolve/{commit}/"
                    if path.startswith(prefix) and path[len(prefix):] in files:
                        return self.send(files[path[len(prefix):]], ranged=True)
                for sha, content in sources.blobs.items():
                    if path.endswith(f"/git/blobs/{sha}"):
                        return self.send(content, ranged=True)
                self.send_response(404)
                self.end_headers()

            def send(self, content, ranged=False):
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if ranged and self.headers["Range"] else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(content) - start))
                self.end_headers()
                if self.path in sources.cut_once:            # the connection drops half-way, once
                    sources.cut_once.discard(self.path)
                    self.wfile.write(content[start:start + (len(content) - start) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(content[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sibling(self, name, content):
        entry = {"rfilename": name, "size": len(content)}
        if name.endswith((".bin", ".safetensors")):
            digest = hashlib.sha256(content).hexdigest()
            entry["lfs"] = {"sha256": "0" * 64 if name in self.wrong_hash else digest, "size": len(content)}
        return entry

    def file_gets(self):
        return [path for path, _ in self.requests if "/api/models/" not in path]


@pytest.fixture(scope="module")
def published_classifiers(tmp_path_factory):
    """Two classifiers in the published format, standing in for 300_model.pth and 500_model.pth."""
    folder = tmp_path_factory.mktemp("published")
    paths = []
    for length in (300, 500):
        path = folder / f"{length}_model.pth"
        subprocess.run([sys.executable, str(ROOT / "tests/helpers/make_published_checkpoint.py"), str(path)],
                       check=True)
        paths.append(path)
    return paths


@pytest.fixture
def sources(tiny_models, published_classifiers, monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    repos = {DNABERT_S.hub_id: (DNABERT_S.revision, DNABERT_S.revision,
                                      {**folder_files(tiny_models["dna"]), "bert_layers.py": b"raise SystemExit\n"}),
             FASTESM2_650.hub_id: ("main", FASTESM_COMMIT, folder_files(tiny_models["protein"])),
             ESM2_3B.hub_id: (ESM2_3B.revision, ESM2_3B.revision,
                                    folder_files(tiny_models["esm2_3b"]))}
    contents = [path.read_bytes() for path in published_classifiers]
    running = Sources(repos, {git_blob(content): content for content in contents})
    monkeypatch.setattr(fetcher, "HUB_URL", running.url)
    monkeypatch.setattr(fetcher, "GITHUB_API", running.url)
    monkeypatch.setattr(fetcher.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for item, content in zip((CLASSIFIER_300, CLASSIFIER_500), contents):
        stand_in = dataclasses.replace(item, blob_sha1=git_blob(content))     # the real hashes name the real files
        monkeypatch.setitem(ARTIFACTS, item.key, stand_in)
        monkeypatch.setattr(checkpoints, "PUBLISHED_BY_BLOB", {**checkpoints.PUBLISHED_BY_BLOB,
                                                               stand_in.blob_sha1: stand_in})
    yield running
    running.httpd.shutdown()


def fetch(models, *args):
    return fetch_script.main(["--models-dir", str(models), *args])


def test_fetch_what_prediction_needs_verified_then_nothing_more(sources, tiny_models, tmp_path, caplog):
    models = tmp_path / "models"
    assert fetch(models) == 0
    assert sorted(os.listdir(models)) == ["classifiers", "dnabert-s", "esm2-3b"]      # the ESM2-3B pipeline
    assert sorted(os.listdir(models / "classifiers")) == ["300_model.pth", "500_model.pth"]
    assert folder_files(models / "dnabert-s").keys() == folder_files(tiny_models["dna"]).keys() | {"fetched.json"}
    record = json.loads((models / "dnabert-s/fetched.json").read_text())
    assert record["commit"] == DNABERT_S.revision and "bert_layers.py" not in record["files"]
    assert units.load_dnabert_s(str(models / "dnabert-s"), device="cpu")           # a model the loader takes
    sources.requests.clear()
    assert fetch(models) == 0
    assert sources.file_gets() == [] and "nothing to fetch" in caplog.text


def test_an_unpinned_revision_is_resolved_and_recorded(sources, tmp_path, caplog):
    models = tmp_path / "models"
    assert fetch(models, "fastesm650") == 0
    assert json.loads((models / "fastesm650/fetched.json").read_text())["commit"] == FASTESM_COMMIT
    assert f"revision main is commit {FASTESM_COMMIT}" in caplog.text
    assert model_folder(FASTESM2_650, None, str(models)) == str(models / "fastesm650")


def test_an_interrupted_download_resumes(sources, tmp_path):
    weights = f"/{DNABERT_S.hub_id}/resolve/{DNABERT_S.revision}/pytorch_model.bin"
    sources.cut_once.add(weights)
    assert fetch(tmp_path / "models", "dnabert-s") == 0
    assert (weights, None) in sources.requests and any(p == weights and r for p, r in sources.requests)
    assert not list((tmp_path / "models").rglob("*.part"))


def test_a_file_that_does_not_match_its_hash_is_refused_and_deleted(sources, tmp_path, capsys):
    sources.wrong_hash.add("pytorch_model.bin")
    assert fetch(tmp_path / "models", "dnabert-s") == 2
    error = capsys.readouterr().err
    assert "pytorch_model.bin does not match the SHA-256 the hub lists for it" in error
    assert not (tmp_path / "models/dnabert-s").exists() and not (tmp_path / "models/dnabert-s.incomplete").exists()
    sources.blobs = {sha: content[:-10] + b"tampered!!" for sha, content in sources.blobs.items()}
    assert fetch(tmp_path / "models", "classifier-300") == 2
    assert f"is not git blob {ARTIFACTS['classifier-300'].blob_sha1}" in capsys.readouterr().err
    assert not list((tmp_path / "models/classifiers").iterdir())


def test_a_model_in_the_hugging_face_cache_is_not_fetched_again(sources, tiny_models, tmp_path, caplog):
    snapshot = tmp_path / "hf-cache/models--zhihan1996--DNABERT-S/snapshots" / DNABERT_S.revision
    shutil.copytree(tiny_models["dna"], snapshot)
    assert fetch(tmp_path / "models", "dnabert-s") == 0
    assert sources.file_gets() == [] and "found in the Hugging Face cache" in caplog.text
    assert fetch(tmp_path / "models", "dnabert-s", "--bundle", str(tmp_path / "b.tar")) == 0   # bundled from there


def test_offline_gives_one_line_per_missing_model(sources, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetcher, "HUB_URL", "http://127.0.0.1:9")            # nothing listens there
    monkeypatch.setattr(fetcher, "GITHUB_API", "http://127.0.0.1:9")
    assert fetch(tmp_path / "models", "dnabert-s", "classifier-300") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") and "--from-bundle models.tar" in line for line in lines)
    assert lines[0].startswith("error: dnabert-s: listing zhihan1996/DNABERT-S")


def test_bundle_round_trip_and_a_corrupted_member_refused(sources, tmp_path):
    models, bundle = tmp_path / "models", tmp_path / "models.tar"
    assert fetch(models, "--all", "--bundle", str(bundle)) == 0
    elsewhere = tmp_path / "cluster"
    assert fetch(elsewhere, "--from-bundle", str(bundle)) == 0
    for item in ("dnabert-s", "fastesm650", "esm2-3b", "classifiers"):
        assert folder_files(elsewhere / item) == folder_files(models / item), item

    damaged = tmp_path / "damaged.tar"
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name == "esm2-3b/model.safetensors")
    content = bytearray(bundle.read_bytes())
    content[member.offset_data + 100] ^= 0xFF
    damaged.write_bytes(bytes(content))
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match="esm2-3b/model.safetensors does not match its SHA-256"):
        fetch(fresh, "--from-bundle", str(damaged))
    assert not fresh.exists() or os.listdir(fresh) == []


# ------------------------------------------------------------ prediction without a checkpoint
def prepared_models(tiny_models, published_classifiers, folder):
    """A models folder as --from-bundle leaves it, with the tiny models."""
    for key, source in (("dnabert-s", "dna"), ("fastesm650", "protein"), ("esm2-3b", "esm2_3b")):
        shutil.copytree(tiny_models[source], folder / key)
    (folder / "classifiers").mkdir()
    for path in published_classifiers:
        shutil.copy(path, folder / "classifiers")
    return folder


def test_prediction_picks_its_classifier_from_the_models_folder(tiny_models, published_classifiers, tmp_path,
                                                                 monkeypatch, caplog):
    models = prepared_models(tiny_models, published_classifiers, tmp_path / "models")
    monkeypatch.setenv(MODELS_ENV, str(models))
    sample = ROOT / "data/sample.fasta"
    assert prediction.main([str(sample), "300", "-o", str(tmp_path / "published"), "--device", "cpu"]) == 0
    assert f"classifier {models / 'classifiers/300_model.pth'}, esm2_3b pipeline: no FastESM2_650 classifier " \
           "is installed for 300-bp chunks" in caplog.text
    torch.manual_seed(0)
    trained = tmp_path / "trained.pth"
    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, 512, 2), trained, chunk_length=300)
    installed = install_classifier(str(trained), 300)
    assert installed == str(models / "classifiers/model_fastesm650_300.pth")
    assert prediction.main([str(sample), "300", "-o", str(tmp_path / "ours"), "--device", "cpu"]) == 0
    assert "fastesm650 pipeline: the FastESM2_650 classifier installed for 300-bp chunks" in caplog.text
    assert fetcher.default_items(str(models)) == ["dnabert-s", "fastesm650"]


@pytest.mark.slow
def test_the_first_command_on_a_fresh_machine(tiny_models, published_classifiers, tmp_path):
    """README's first command, in a folder holding the sample: with a models
    folder unpacked from a bundle it runs; with nothing prepared and no network
    it says to run scripts/fetch_models.py."""
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data/sample.fasta", tmp_path / "data")
    command = [sys.executable, str(ROOT / "prediction.py"), "data/sample.fasta", "300"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", VIRNUCPRO_MODELS=str(tmp_path / "nothing"))
    bare = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bare.returncode == 2 and bare.stderr.strip().count("\n") == 0
    assert "python scripts/fetch_models.py" in bare.stderr and not (tmp_path / "data/sample_merged").exists()

    models = prepared_models(tiny_models, published_classifiers, tmp_path / "prepared")
    bundle = tmp_path / "models.tar"
    fetcher.make_bundle(str(bundle), list(ARTIFACTS), str(models))
    env["VIRNUCPRO_MODELS"] = str(tmp_path / "models")
    unpack = subprocess.run([sys.executable, str(ROOT / "scripts/fetch_models.py"), "--from-bundle", str(bundle)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert unpack.returncode == 0, unpack.stderr
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "data/sample_merged/prediction_summary.tsv").read_text().splitlines()) == 11
