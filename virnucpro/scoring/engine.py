"""The embedding engine: sequences to pooled embeddings and frame scores, in memory.

Prediction and feature extraction both embed through it. Host work (frame
selection, tokenization, batch building) is array work, and prediction runs it
in a background thread one shard ahead of the device work (encoders, pooling,
classifier), so the GPU does not wait for Python.

Sections:
  1. Token rows: DNA through the fast tokenizer in one batch call, proteins
     through a lookup table over residue bytes, kept as one flat array
  2. Encoders with the published pooling, on the device
  3. Embedding token rows in token-budget batches
  4. Scoring frames, and host work prefetched in the background
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from virnucpro.errors import DimensionError, InputError
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.sequences.fasta import read_fasta

PROTEIN_TRUNCATION = 1024          # residues embedded per protein, as the published fair-esm extraction
DNA_TOKS_PER_BATCH = 16384         # default token budgets of a padded batch, for every script and function
PROTEIN_TOKS_PER_BATCH = 16384
# Attention kernels for inference, in this order: never cuDNN's, which builds a plan for every new batch shape
# (tens to hundreds of milliseconds of host time each); the math kernel is the fallback.
INFERENCE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# =============================================================================
# 1. Token rows
# =============================================================================

@dataclass(frozen=True)
class BatchShapes:
    """How batches are shaped for a device. On a GPU a padded batch is as wide as a multiple of 8 (few
    widths: few kernel shapes, and the alignment memory-efficient attention wants for a bias), its rows as
    many as the budget allows at that width, and, for an encoder that asks for it (ESM-2: flash attention
    takes no mask), a batch without padding keeps its width and gets no mask; the CPU keeps exact widths and
    masks (its results stay those of the one-at-a-time published code, bit for bit)."""
    width_multiple: int = 1
    unpadded_without_mask: bool = False

    @classmethod
    def of(cls, device: torch.device, unpadded_without_mask: bool = False) -> BatchShapes:
        return cls(8, unpadded_without_mask) if device.type == "cuda" else EXACT

    def width(self, length: int) -> int:
        return -(-length // self.width_multiple) * self.width_multiple


EXACT = BatchShapes()


@dataclass
class TokenRows:
    """The token ids of many sequences back to back in one array, with each row's start and length."""
    ids: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_lengths(cls, ids: np.ndarray, lengths: np.ndarray) -> TokenRows:
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(ids, starts, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, rows: np.ndarray, pad_id: int, shapes: BatchShapes | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded token ids of ``rows`` and their attention mask, as ``shapes`` (default: the exact
        width, a mask always) makes them."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        shapes = shapes or EXACT
        if shapes.unpadded_without_mask and int(lengths.min()) == width:
            ids = self.ids[self.starts[rows][:, None] + np.arange(width)[None, :]]
            return torch.from_numpy(ids), None
        width = shapes.width(width)
        positions = np.arange(width)
        mask = positions[None, :] < lengths[:, None]
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        ids[mask] = self.ids[(self.starts[rows][:, None] + positions[None, :])[mask]]
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


@functools.lru_cache(maxsize=4)
def _letters_tokenizer(tokenizer):
    """A copy of the tokenizer's Rust tokenizer for sequences of letters: it
    neither truncates nor pads, and has no Whitespace pre-tokenizer, to which
    a sequence of letters is one word anyway (the ids stay the same, the
    encoding takes about 4% less time)."""
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    if isinstance(backend.pre_tokenizer, pre_tokenizers.Whitespace):
        backend.pre_tokenizer = None
    return backend


def dna_tokens(tokenizer, sequences: list[str]) -> TokenRows:
    """DNABERT-S token ids ([CLS] ... [SEP]) of each sequence (IUPAC letters),
    encoded in one call of the Rust tokenizer (all cores, no offsets): the ids
    ``tokenizer(sequences)`` gives."""
    backend = _letters_tokenizer(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    rows = [encoding.ids for encoding in encode(sequences)]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return TokenRows.from_lengths(ids, lengths)


@dataclass
class FileTokens:
    """The ids and token rows of a FASTA file's sequences (upper-cased), read and tokenized ahead of its
    embedding: feature extraction prepares the next file's while the device embeds this one's."""
    ids: list[str]
    rows: TokenRows


def file_tokens(fasta_file, alphabet: str, tokenize: Callable[[list[str]], TokenRows]) -> FileTokens:
    ids, sequences = [], []
    for record in read_fasta(fasta_file, alphabet=alphabet):
        ids.append(record.id)
        sequences.append(record.sequence.upper())
    return FileTokens(ids, tokenize(sequences))


def dna_tokenizing(tokenizer) -> Callable[[list[str]], TokenRows]:
    """What turns DNA sequences into DNABERT-S's token rows."""
    return functools.partial(dna_tokens, tokenizer)


def protein_tokenizing(tokenizer, truncation: int = PROTEIN_TRUNCATION) -> Callable[[list[str]], TokenRows]:
    """What turns proteins into an ESM-2 model's token rows, each cut to ``truncation`` residues."""
    table = residue_table(tokenizer)
    return lambda proteins: protein_tokens(tokenizer, table, proteins, truncation)


def residue_table(tokenizer) -> np.ndarray:
    """The ESM-2 token id of each byte: its single-letter token, else the unknown token."""
    table = np.full(256, tokenizer.unk_token_id, dtype=np.int64)
    for token, token_id in tokenizer.get_vocab().items():
        if len(token) == 1 and ord(token) < 256:
            table[ord(token)] = token_id
    return table


def protein_tokens(tokenizer, table: np.ndarray, proteins: list[str],
                   truncation: int = PROTEIN_TRUNCATION) -> TokenRows:
    """ESM-2 token ids (<cls> residues <eos>) of each protein, its first
    ``truncation`` residues, by table lookup over the residue bytes: the ids
    the tokenizer gives, without a Python call per residue."""
    cut = [protein[:truncation] for protein in proteins]
    residues = np.fromiter(map(len, cut), dtype=np.int64, count=len(cut))
    lengths = residues + 2
    rows = TokenRows.from_lengths(np.empty(int(lengths.sum()), dtype=np.int64), lengths)
    body = np.ones(len(rows.ids), dtype=bool)
    body[rows.starts] = body[rows.starts + lengths - 1] = False
    rows.ids[rows.starts] = tokenizer.cls_token_id
    rows.ids[rows.starts + lengths - 1] = tokenizer.eos_token_id
    rows.ids[body] = table[np.frombuffer("".join(cut).encode("ascii"), dtype=np.uint8)]
    return rows


# =============================================================================
# 2. Encoders with their pooling
# =============================================================================

def _weighted_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of each row's hidden states over the positions of weight 1, in fp32."""
    weights = weights.float()
    return torch.bmm(weights[:, None, :], hidden.float())[:, 0] / weights.sum(dim=1, keepdim=True)


class DnaEncoder(torch.nn.Module):
    """DNABERT-S with the published pooling: the mean over all tokens, [CLS]
    and [SEP] included, padding excluded. Its attention takes the ALiBi bias whatever the padding, so a
    batch is always masked (``BatchShapes``)."""

    unpadded_without_mask = False

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = self.model(input_ids, attention_mask=attention_mask)[0]
        return hidden.float().mean(dim=1) if attention_mask is None else _weighted_mean(hidden, attention_mask)


class ProteinEncoder(torch.nn.Module):
    """An ESM-2 model (FastESM2_650, ESM2-3B) with the published pooling: the
    mean over residue positions only (no <cls>, <eos> or padding). A batch without padding runs unmasked on a
    GPU, where flash attention takes it (``BatchShapes``)."""

    unpadded_without_mask = True

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:                          # no padding: every row <cls> residues <eos>
            return hidden[:, 1:-1].float().mean(dim=1)
        residues = attention_mask.clone()
        residues[:, 0] = 0
        residues.scatter_(1, attention_mask.sum(dim=1, keepdim=True) - 1, 0)
        return _weighted_mean(hidden, residues)


# =============================================================================
# 3. Embedding token rows
# =============================================================================

def token_budget_batches(lengths: np.ndarray, toks_per_batch: int, shapes: BatchShapes | None = None
                         ) -> list[np.ndarray]:
    """Row indices grouped longest first, so that each padded batch (rows x
    its width: the longest row, as ``shapes`` widens it) holds at most
    ``toks_per_batch`` tokens; a row longer than the budget gets a batch of its own."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, toks_per_batch // (shapes or EXACT).width(int(lengths[order[start]])))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def embed_rows(encoder: torch.nn.Module, rows: TokenRows, ids: list[str], pad_id: int, toks_per_batch: int,
               desc: str, out: torch.Tensor | None = None, shapes: BatchShapes | None = None
               ) -> tuple[torch.Tensor, dict[int, tuple[str, str]]]:
    """Pooled embeddings of every row (sequence ``ids``), float32 ``[rows,
    width]`` on the encoder's device (written into ``out`` when given), and
    the rows that failed, ``{row: (kind, message)}``. Batches are shaped as ``shapes`` says (default: as
    the device wants them) and attention runs on ``INFERENCE_ATTENTION``'s kernels.

    Batches are copied from pinned memory without blocking and their results
    stay on the device until the end, so the host builds the next batch while
    the device works. A batch that runs out of GPU memory is split in two and
    retried; a row that still does not fit, or whose embedding is not finite,
    is a failure. An encoder whose output is not its width is refused."""
    from tqdm import tqdm

    device = next(encoder.parameters()).device
    pin = device.type == "cuda"
    shapes = shapes or BatchShapes.of(device, getattr(encoder, "unpadded_without_mask", False))
    embeddings = torch.zeros(len(rows), encoder.width, device=device) if out is None else out
    failures: dict[int, tuple[str, str]] = {}
    pending = list(reversed(token_budget_batches(rows.lengths, toks_per_batch, shapes)))
    with tqdm(total=len(rows), desc=desc, unit="seq", leave=False) as progress, torch.inference_mode(), \
            sdpa_kernel(INFERENCE_ATTENTION, set_priority=True):
        while pending:
            batch = pending.pop()
            input_ids, mask = rows.padded(batch, pad_id, shapes)
            where = torch.from_numpy(batch)
            if pin:       # copies from pinned memory do not wait for the device: no host sync in this loop
                input_ids, where = input_ids.pin_memory(), where.pin_memory()
                mask = None if mask is None else mask.pin_memory()
            try:
                pooled = encoder(input_ids.to(device, non_blocking=True),
                                 None if mask is None else mask.to(device, non_blocking=True))
            except torch.OutOfMemoryError as error:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(batch) > 1:
                    pending += [batch[len(batch) // 2:], batch[:len(batch) // 2]]
                    continue
                failures[int(batch[0])] = ("out_of_memory", str(error).strip().splitlines()[0])
                progress.update(1)
                continue
            if tuple(pooled.shape) != (len(batch), encoder.width):
                raise DimensionError(encoder.width, tuple(pooled.shape[1:]), ids[batch[0]], f"{desc} embeddings")
            embeddings[where.to(device, non_blocking=True)] = pooled
            progress.update(len(batch))
    # max and min propagate NaN: two reductions tell whether any row needs a look
    if not torch.isfinite(torch.stack([embeddings.amax(), embeddings.amin()])).all() if len(rows) else False:
        for row in np.flatnonzero(~torch.isfinite(embeddings).all(dim=1).cpu().numpy()):
            failures.setdefault(int(row), ("non_finite", "the embedding holds NaN or infinite values"))
    return embeddings, failures


# =============================================================================
# 4. Scoring frames
# =============================================================================

@dataclass
class Frames:
    """Frames to score, tokenized: ids, nucleotides and proteins in order, and their token rows."""
    ids: list[str]
    nucleotides: list[str]
    proteins: list[str]
    dna: TokenRows
    protein: TokenRows


@dataclass
class Scores:
    """What scoring gave: ``probabilities`` ``[others, virus]`` of the frames
    in ``kept`` (indices into the frames), each encoder's embeddings of every
    frame (on the device), and the failures as ``(frame id, encoder, kind, message)``."""
    kept: np.ndarray
    probabilities: np.ndarray
    dna: torch.Tensor
    protein: torch.Tensor
    failures: list[tuple[str, str, str, str]]


class Engine:
    """DNABERT-S, a protein model and a classifier on one device."""

    def __init__(self, dna: tuple, protein: tuple, classifier: torch.nn.Module, dna_batch_tokens: int,
                 protein_batch_tokens: int, protein_name: str):
        (dna_model, self.dna_tokenizer), (protein_model, self.protein_tokenizer) = dna, protein
        self.dna_encoder, self.protein_encoder = DnaEncoder(dna_model), ProteinEncoder(protein_model)
        self.classifier = classifier
        self.residues = residue_table(self.protein_tokenizer)
        self.dna_batch_tokens, self.protein_batch_tokens = dna_batch_tokens, protein_batch_tokens
        self.protein_name = protein_name

    def tokenize(self, ids: list[str], nucleotides: list[str], proteins: list[str]) -> Frames:
        """Host work: the token rows of frames, given as columns; every DNA token must have an embedding."""
        dna = dna_tokens(self.dna_tokenizer, nucleotides)
        vocabulary = self.dna_encoder.model.config.vocab_size
        if len(dna.ids) and int(dna.ids.max()) >= vocabulary:
            raise InputError(f"the DNABERT-S tokenizer gives token {int(dna.ids.max())}, but the model has "
                             f"{vocabulary} tokens: the tokenizer is not this model's")
        return Frames(ids, nucleotides, proteins, dna, protein_tokens(self.protein_tokenizer, self.residues, proteins))

    def score(self, frames: Frames) -> Scores:
        """Device work: embed the frames with both encoders and classify the
        concatenated embeddings of those both embedded."""
        # each encoder writes its columns, no concatenation pass; a failed frame's row stays unset and unused
        width = self.dna_encoder.width
        features = torch.empty(len(frames.ids), width + self.protein_encoder.width,
                               device=next(self.classifier.parameters()).device)
        dna, dna_failed = embed_rows(self.dna_encoder, frames.dna, frames.ids, self.dna_tokenizer.pad_token_id,
                                     self.dna_batch_tokens, "DNABERT-S", out=features[:, :width])
        protein, protein_failed = embed_rows(self.protein_encoder, frames.protein, frames.ids,
                                             self.protein_tokenizer.pad_token_id, self.protein_batch_tokens,
                                             self.protein_name, out=features[:, width:])
        failures = [(frames.ids[row], "DNABERT-S", *failure) for row, failure in sorted(dna_failed.items())]
        failures += [(frames.ids[row], self.protein_name, *failure) for row, failure in sorted(protein_failed.items())]
        failed = [*dna_failed, *protein_failed]
        kept = np.setdiff1d(np.arange(len(frames.ids)), failed)
        probabilities = predict_probabilities(self.classifier, features[kept] if failed else features).numpy()
        return Scores(kept, probabilities, dna, protein, failures)


def predict_probabilities(model: torch.nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax class probabilities (float32, ``[others, virus]``) of each row."""
    device = next(model.parameters()).device
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            logits = model(features[start:start + batch_size].to(device))
            parts.append(torch.softmax(logits, dim=1).float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, NUM_CLASSES)


def prefetched(items: Iterable, prepare: Callable, ahead: int = 1) -> Iterator:
    """``prepare(item)`` for each item in order, computed by a background
    thread that reads ``items`` and stays ``ahead`` items in advance; an
    error there is raised here, at its item. ``ahead=0`` prepares in this
    thread: when the device is the CPU itself, a second thread would only
    compete with it for the cores."""
    if ahead == 0:
        yield from map(prepare, items)
        return
    iterator, end = iter(items), object()

    def next_prepared():
        item = next(iterator, end)
        return end if item is end else prepare(item)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-work")
    try:
        pending = collections.deque(pool.submit(next_prepared) for _ in range(ahead))
        while True:
            result = pending.popleft().result()
            if result is end:
                return
            pending.append(pool.submit(next_prepared))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
