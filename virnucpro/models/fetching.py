"""Fetching what VirNucPro downloads, and carrying it to machines without internet.

- resumable HTTP downloads with retries;
- the RefSeq genomes of the training set (scripts/download_data.py): the viral
  release files and genome pairs sampled from the host categories' listings;
- the pinned language models (Hugging Face snapshots: configs, tokenizer files
  and weights, never a ``*.py``) and the published classifiers (GitHub blobs,
  fetched and verified by their git blob SHA-1) into the models folder, each
  file checked against the hash the source publishes;
- offline bundles: one tar file with a SHA-256 manifest, made where there is
  internet and unpacked (and verified) where there is none.

What to fetch is the pin table in ``units`` (``ARTIFACTS``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import io
import json
import os
import random
import shutil
import tarfile
import time
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests

from virnucpro.errors import InputError
from virnucpro.files import atomic_write, file_sha256, git_blob_sha1
from virnucpro.log import logger
from virnucpro.models.modelfiles import weight_files
from virnucpro.models.pins import ARTIFACTS, CLASSIFIERS, ModelSpec, PublishedClassifier

HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
GITHUB_API = os.environ.get("VIRNUCPRO_GITHUB_API", "https://api.github.com").rstrip("/")
RETRIES = 5
BLOCK = 1 << 20
HUB_PATTERNS = ("*.json", "*.txt", "*.safetensors")    # PyTorch *.bin only where there is no safetensors
FETCH_RECORD = "fetched.json"       # in a fetched model's folder: source, commit, SHA-256 of each file
MANIFEST = "manifest.json"          # in a bundle: SHA-256 of each file


# ---------------------------------------------------------------- HTTP
def with_retries(request, what: str, retries: int = RETRIES, backoff: float = 2.0):
    """Call ``request()``; on a network error or a 5xx answer wait 1, 2, 4, ...
    x ``backoff`` / 2 seconds and try again."""
    for attempt in range(retries):
        try:
            response = request()
            if response.status_code < 500:
                response.raise_for_status()
                return response
            error = f"HTTP {response.status_code}"
        except requests.HTTPError as failure:
            raise InputError(f"{what}: {failure}") from None
        except requests.RequestException as failure:
            error = failure.__class__.__name__
        if attempt + 1 < retries:
            delay = backoff ** attempt * backoff / 2
            logger.warning(f"{what}: {error}; retrying in {delay:.0f} s")
            time.sleep(delay)
    raise InputError(f"{what}: still failing after {retries} attempts ({error}); check the network and "
                           "run again: finished files are kept and partial ones resume")


def download(session, url: str, path: str, size: int | None = None, headers: dict | None = None) -> str:
    """Fetch ``url`` into ``path`` unless a complete copy (of ``size``) is
    there; a partial ``path.part`` resumes with an HTTP range request. Without
    ``size``, the server's Content-Length tells when the file is complete."""
    from tqdm import tqdm

    if size is not None and os.path.exists(path) and os.path.getsize(path) == size:
        return "present"
    partial = path + ".part"
    for _ in range(RETRIES):
        done = os.path.getsize(partial) if os.path.exists(partial) else 0
        if size is not None and done > size:
            os.remove(partial)
            done = 0
        if size is not None and done == size:
            break
        request_headers = {**(headers or {}), **({"Range": f"bytes={done}-"} if done else {})}
        response = with_retries(lambda: session.get(url, headers=request_headers, stream=True, timeout=60),
                                f"downloading {url}")
        if done and response.status_code != 206:      # the server ignored the range: start over
            done = 0
        length = response.headers.get("content-length")
        expected = size if size is not None else (done + int(length) if length else None)
        try:
            with open(partial, "ab" if done else "wb") as out, \
                    tqdm(total=expected, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=os.path.basename(path), leave=False) as progress:
                for block in response.iter_content(chunk_size=BLOCK):
                    out.write(block)
                    progress.update(len(block))
        except requests.RequestException as failure:
            logger.warning(f"{url}: interrupted ({failure.__class__.__name__}); resuming")
            continue
        if expected is None or os.path.getsize(partial) == expected:
            break
    else:
        raise InputError(f"{url}: the download does not reach the server's size; run again")
    os.replace(partial, path)
    return "downloaded"


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000


# ---------------------------------------------------------------- RefSeq genomes
RELEASE_URL = "https://ftp.ncbi.nlm.nih.gov/refseq/release/"
VIRAL_FILES = ("viral/viral.1.1.genomic.fna.gz", "viral/viral.1.genomic.gbff.gz")
# Published order: the random draws follow it.
HOST_COUNTS = {"bacteria": 1, "archaea": 1, "fungi": 1, "protozoa": 1,
               "plant": 10, "invertebrate": 10, "vertebrate_mammalian": 10, "vertebrate_other": 10}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.links.append(href)


def list_genome_pairs(session, base_url: str, category: str) -> list[str]:
    """URLs of the ``*genomic.gbff.gz`` files listed under a category, in listing order."""
    url = urljoin(base_url, f"{category}/")
    parser = _Links()
    parser.feed(with_retries(lambda: session.get(url, timeout=60), f"listing {url}").text)
    links = [urljoin(url, link) for link in parser.links if "genomic" in link]
    return [link for link in links if link.endswith("genomic.gbff.gz")]


def plan_downloads(session, base_url: str, counts: dict[str, int], seed: int) -> list[str]:
    """The URLs to fetch: the viral release files, then the sampled host pairs."""
    rng = random.Random(seed)
    urls = [urljoin(base_url, path) for path in VIRAL_FILES]
    for category, count in counts.items():
        gbffs = list_genome_pairs(session, base_url, category)
        if not gbffs:
            logger.warning(f"{urljoin(base_url, category)}/: no *genomic.gbff.gz listed; nothing to sample")
            continue
        for gbff in rng.sample(gbffs, min(count, len(gbffs))):
            urls += [gbff, gbff.replace("genomic.gbff.gz", "1.genomic.fna.gz")]
    return urls


def remote_size(session, url: str) -> int:
    """The server's size of a file (its Content-Length)."""
    response = with_retries(lambda: session.head(url, timeout=60, allow_redirects=True), f"size of {url}")
    return int(response.headers.get("content-length", 0))


def parse_counts(values: list[str]) -> dict[str, int]:
    """The genome pairs to sample per host category: the published counts, changed by ``CATEGORY=N`` values."""
    counts = dict(HOST_COUNTS)
    for value in values:
        category, _, number = value.partition("=")
        if category not in HOST_COUNTS or not number.isdigit():
            raise InputError(f"--count {value}: expected CATEGORY=N with CATEGORY one of "
                                   f"{', '.join(HOST_COUNTS)}")
        counts[category] = int(number)
    return counts


# ---------------------------------------------------------------- language models (Hugging Face)
def hub_listing(session, spec: ModelSpec) -> tuple[str, list[dict]]:
    """``(commit, files)`` of a model at its revision: the top-level files the
    loaders read, each ``{'rfilename', 'size', 'lfs': {'sha256'}}`` as the hub lists them."""
    url = f"{HUB_URL}/api/models/{spec.hub_id}/revision/{spec.revision}"
    info = with_retries(lambda: session.get(url, params={"blobs": "true"}, timeout=60),
                        f"{spec.key}: listing {spec.hub_id} at {spec.revision}", retries=3).json()
    files = [f for f in info.get("siblings", []) if "/" not in f["rfilename"]]
    wanted = [f for f in files if any(fnmatch.fnmatch(f["rfilename"], p) for p in HUB_PATTERNS)]
    if not any(f["rfilename"].endswith(".safetensors") for f in wanted):
        wanted += [f for f in files if f["rfilename"].endswith(".bin")]
    return info["sha"], wanted


def in_hub_cache(spec: ModelSpec) -> str | None:
    """The model's snapshot folder in the Hugging Face cache, if it is there at the pinned revision."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec.hub_id, revision=spec.revision, local_files_only=True)
    except Exception:                    # not cached: each huggingface_hub version says so its own way
        return None
    return folder if weight_files(folder) else None


def fetch_hub_model(session, spec: ModelSpec, models: str) -> str:
    """Fetch a model's files into ``models/<key>`` (through ``<key>.incomplete``,
    renamed when every file is there and verified); returns what happened."""
    folder = os.path.join(models, spec.key)
    if os.path.exists(os.path.join(folder, FETCH_RECORD)):
        return "present"
    cached = in_hub_cache(spec)
    if cached:
        logger.info(f"{spec.key}: found in the Hugging Face cache ({cached}); not fetched again")
        return "in the Hugging Face cache"
    commit, files = hub_listing(session, spec)
    sizes = {f["rfilename"]: f.get("size") or f.get("lfs", {}).get("size") for f in files}
    logger.info(f"{spec.key}: {spec.hub_id} at {commit}: {len(files)} files, "
                      f"{human_size(sum(size or 0 for size in sizes.values()))}")
    incomplete = folder + ".incomplete"
    os.makedirs(incomplete, exist_ok=True)
    hashes = {}
    for entry in files:
        name = entry["rfilename"]
        path = os.path.join(incomplete, name)
        download(session, f"{HUB_URL}/{spec.hub_id}/resolve/{commit}/{name}", path, sizes[name])
        hashes[name] = file_sha256(path)
        published = entry.get("lfs", {}).get("sha256")
        if published and hashes[name] != published:
            shutil.rmtree(incomplete)
            raise InputError(f"{spec.key}: {name} does not match the SHA-256 the hub lists for it "
                                   f"({published[:16]}...); deleted; run the fetch again")
    with open(os.path.join(incomplete, FETCH_RECORD), "w") as handle:
        json.dump({"source": spec.hub_id, "revision": spec.revision, "commit": commit, "files": hashes},
                  handle, indent=1)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(incomplete, folder)
    if spec.revision != commit:
        logger.info(f"{spec.key}: revision {spec.revision} is commit {commit} (recorded in "
                          f"{os.path.join(folder, FETCH_RECORD)}); --revision {commit} fetches exactly this again")
    return "fetched"


# ---------------------------------------------------------------- published classifiers (GitHub)
def classifier_path(item: PublishedClassifier, models: str) -> str:
    return os.path.join(models, CLASSIFIERS, item.file)


def fetch_classifier(session, item: PublishedClassifier, models: str) -> str:
    """Fetch a published classifier by its git blob SHA-1 and keep it only if its content has that id."""
    path = classifier_path(item, models)
    if os.path.exists(path) and git_blob_sha1(path) == item.blob_sha1:
        return "present"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fetching = path + ".download"
    download(session, f"{GITHUB_API}/repos/{item.repo}/git/blobs/{item.blob_sha1}", fetching,
             headers={"Accept": "application/vnd.github.raw"})
    logger.info(f"{item.key}: {item.file}, {human_size(os.path.getsize(fetching))}")
    if git_blob_sha1(fetching) != item.blob_sha1:
        os.remove(fetching)
        raise InputError(f"{item.key}: the file fetched as {item.file} is not git blob {item.blob_sha1}; "
                               "deleted; run the fetch again")
    os.replace(fetching, path)
    return "fetched"


# ---------------------------------------------------------------- what to fetch
def installed_fastesm_classifiers(models: str) -> list[str]:
    return sorted(glob.glob(os.path.join(models, CLASSIFIERS, "model_fastesm650_*.pth")))


def default_items(models: str) -> list[str]:
    """What prediction.py uses by default: DNABERT-S and FastESM2_650 once a
    FastESM2_650 classifier is installed; until then the published ESM2-3B
    pipeline and its classifiers."""
    if installed_fastesm_classifiers(models):
        return ["dnabert-s", "fastesm650"]
    return ["dnabert-s", "classifier-300", "classifier-500", "esm2-3b"]


def fetch(keys: list[str], models: str, revision: str | None = None) -> tuple[dict, list[str]]:
    """Fetch every item; ``({key: what happened}, [one line per item that failed])``."""
    outcome, failures = {}, []
    with requests.Session() as session:
        for key in keys:
            item = ARTIFACTS[key]
            try:
                if isinstance(item, PublishedClassifier):
                    outcome[key] = fetch_classifier(session, item, models)
                else:
                    spec = dataclasses.replace(item, revision=revision) if revision and key == "fastesm650" else item
                    outcome[key] = fetch_hub_model(session, spec, models)
            except InputError as error:
                failures.append(f"{error}; where there is internet, run `python scripts/fetch_models.py "
                                f"{key} --bundle models.tar`, then here `python scripts/fetch_models.py "
                                "--from-bundle models.tar`")
    return outcome, failures


# ---------------------------------------------------------------- offline bundles
def item_files(key: str, models: str) -> list[tuple[str, str]]:
    """``(file on disk, name in the bundle)`` of a fetched item."""
    item = ARTIFACTS[key]
    if isinstance(item, PublishedClassifier):
        path = classifier_path(item, models)
        found = [(path, f"{CLASSIFIERS}/{item.file}")] if os.path.exists(path) else []
    else:
        folder = os.path.join(models, key)
        folder = folder if weight_files(folder) else in_hub_cache(item)
        found = [(os.path.join(folder, name), f"{key}/{name}") for name in sorted(os.listdir(folder))
                 if name == FETCH_RECORD or any(fnmatch.fnmatch(name, p) for p in (*HUB_PATTERNS, "*.bin"))] \
            if folder else []
    if not found:
        raise InputError(f"{key}: not fetched, so it cannot go into a bundle; run "
                               f"`python scripts/fetch_models.py {key}` first")
    return found


def make_bundle(path: str, keys: list[str], models: str) -> int:
    """Pack the fetched items into one tar file with a SHA-256 manifest; returns its size."""
    entries = [entry for key in keys for entry in item_files(key, models)]
    manifest = {name: file_sha256(source) for source, name in entries}
    with atomic_write(path, "wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for source, name in entries:
            tar.add(os.path.realpath(source), arcname=name)      # the HF cache holds symlinks: take the files
    return os.path.getsize(path)


def _known_member(name: str) -> bool:
    """Whether a bundle member is a file of a pinned artifact, as make_bundle names them: a language
    model's ``<key>/<file>``, or a published classifier's ``classifiers/<file>``."""
    key, _, file = name.partition("/")
    if key == CLASSIFIERS:
        return file in {item.file for item in ARTIFACTS.values() if isinstance(item, PublishedClassifier)}
    return isinstance(ARTIFACTS.get(key), ModelSpec) and bool(file) and "/" not in file and file not in (".", "..")


def unpack_bundle(path: str, models: str) -> list[str]:
    """Unpack a bundle into the models folder, every file verified against the
    manifest before anything is put in place; returns the items unpacked. Each
    member must be a file of a pinned artifact; a language model it holds
    replaces that model's folder, a classifier that classifier's file, and
    nothing else in the models folder is touched."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {'a folder' if os.path.isdir(path) else 'no such file'}; --from-bundle takes "
                         "the .tar file that scripts/fetch_models.py --bundle wrote")
    staging = os.path.join(models, ".bundle.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(path) as tar:
            manifest_member = tar.extractfile(MANIFEST)
            manifest = json.load(manifest_member)
            if not isinstance(manifest, dict):
                raise InputError(f"{path}: not a readable bundle of scripts/fetch_models.py (its manifest is not a "
                                 "table of files); make it again with scripts/fetch_models.py --bundle")
            unpacked = set()
            for member in tar.getmembers():
                if member.name == MANIFEST:
                    continue
                if not member.isfile() or member.name not in manifest or not _known_member(member.name):
                    raise InputError(f"{path}: {member.name} is not a file of a pinned model or classifier listed "
                                     "in the bundle's manifest; not a bundle of scripts/fetch_models.py")
                target = os.path.join(staging, member.name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                if file_sha256(target) != manifest[member.name]:
                    raise InputError(f"{path}: {member.name} does not match its SHA-256 in the manifest; "
                                     "the bundle is damaged: copy it again")
                unpacked.add(member.name)
        if unpacked != set(manifest):
            raise InputError(f"{path}: the bundle lacks {sorted(set(manifest) - unpacked)[0]}; copy it again")
        os.makedirs(models, exist_ok=True)
        items = sorted({name.split("/")[0] for name in unpacked})
        for item in items:
            if item == CLASSIFIERS:        # keep classifiers already there (trained ones, say)
                os.makedirs(os.path.join(models, item), exist_ok=True)
                for name in os.listdir(os.path.join(staging, item)):
                    os.replace(os.path.join(staging, item, name), os.path.join(models, item, name))
            else:
                shutil.rmtree(os.path.join(models, item), ignore_errors=True)
                os.replace(os.path.join(staging, item), os.path.join(models, item))
        return items
    except PermissionError as error:
        raise InputError(f"{error.filename or path}: permission denied") from None
    except (tarfile.TarError, KeyError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable bundle of scripts/fetch_models.py "
                         f"({error.__class__.__name__})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
