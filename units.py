"""VirNucPro's shared module: the design card.

The published VirNucPro pipeline, per input sequence: cut it into chunks of
the model's length, translate each chunk in six frames, keep every frame
without a stop codon, embed its DNA with DNABERT-S (768-d, the mean over its
tokens) and its protein with FastESM2_650 (1280-d, the mean over its
residues), concatenate the two (2048-d), and score it with ``MLPClassifier``.

The card, defined here:

- ``extract_DNABERT_S``: DNABERT-S features of a FASTA file of frames;
- ``extract_fast_esm``: FastESM2_650 features of a FASTA file of proteins
  (``extract_esm``: the published ESM2-3B baseline; ``extract_protein``: the
  protein model of a pipeline);
- ``merge_data``: both joined by frame id, every vector checked (2048-d for
  FastESM2_650), into a training or prediction feature file;
- ``MLPClassifier``: the published classifier (2048 -> 512, BatchNorm, ReLU,
  dropout 0.5 -> 2 classes), with ``save_checkpoint`` / ``load_checkpoint``;
- the model loaders the card's functions use: ``load_dnabert_s``,
  ``load_fast_esm``, ``load_esm2_3b``;
- the eleven names of the published ``units.py``: ``split_fasta_chunk``,
  ``create_refseq_pro_list``, ``reverse_complement``, ``translate_dna``,
  ``seq_in_reflist``, ``identify_seq``, ``process_record``,
  ``extract_DNABERT_S``, ``extract_esm``, ``split_fasta_file``,
  ``merge_data``, with their published behaviour.

Nothing else: every other part of the tool is a module of the ``virnucpro``
package (docs/layout.md), imported from there.
"""
from __future__ import annotations

import os

import torch

from virnucpro import errors, files, log
from virnucpro.models import features, loaders, pins
from virnucpro.models.loaders import load_dnabert_s, load_esm2_3b, load_fast_esm
from virnucpro.scoring import calls, checkpoints, engine
from virnucpro.sequences import chunks, fasta, frames, genbank
from virnucpro.sequences.fasta import split_fasta_file
from virnucpro.sequences.frames import reverse_complement, translate_dna

__all__ = [
    # the card
    "extract_DNABERT_S", "extract_fast_esm", "extract_esm", "extract_protein", "merge_data", "MLPClassifier",
    "save_checkpoint", "load_checkpoint", "load_dnabert_s", "load_fast_esm", "load_esm2_3b",
    # the rest of the published units.py
    "split_fasta_chunk", "create_refseq_pro_list", "reverse_complement", "translate_dna", "seq_in_reflist",
    "identify_seq", "process_record", "split_fasta_file",
]


# =============================================================================
# The published sequence functions
# =============================================================================

def split_fasta_chunk(input_file, output_file, chunk_size):
    """Cut every sequence of ``input_file`` into chunks of ``chunk_size`` bases
    and write them to ``output_file`` as ``{id}_chunk_{k}`` (published format:
    case kept, 60 bases per line).

    Returns the number of chunks written.
    """
    chunk_size = int(chunk_size)
    written = 0
    with files.atomic_write(output_file) as out:
        for record in fasta.read_fasta(input_file, alphabet="dna"):
            for k, chunk in enumerate(chunks.iter_chunks(record.sequence, chunk_size), start=1):
                fasta.write_fasta_record(out, chunks.chunk_id(record.id, k), chunk, width=60)
                written += 1
    return written


def seq_in_reflist(sequence, refseq_pro_list):
    """Whether ``sequence`` occurs in any protein of ``refseq_pro_list`` (published)."""
    return any(sequence in protein for protein in refseq_pro_list)


def identify_seq(seqid, sequence, refseq_pro_list=None, istraindata=False):
    """Stop-free frames of one (upper-case) chunk, as the published function:
    a list of ``{'seqid', 'nucleotide', 'protein'}``; in training mode ``None``
    for a chunk with an ambiguous base, and only frames whose protein occurs in
    ``refseq_pro_list`` (a list of proteins or, faster, a ``frames.ProteinIndex``).
    """
    reference = None
    if istraindata:
        if frames.has_ambiguous_base(sequence):
            return None
        reference = refseq_pro_list if isinstance(refseq_pro_list, frames.ProteinIndex) \
            else frames.ProteinIndex(refseq_pro_list or [])
    return [{"seqid": frame_id, "nucleotide": nucleotide, "protein": protein}
            for frame_id, nucleotide, protein in frames.select_frames([(seqid, sequence)], reference)]


def process_record(index, record, refseq_pro_list=None, istraindata=False):
    """``(index, identify_seq of the upper-cased record)``, as published: ``record`` has an ``id`` and a
    ``seq`` (a Biopython record) or a ``sequence`` (a record of ``virnucpro.sequences.fasta.read_fasta``);
    outside training mode the reference list is not used."""
    sequence = str(record.seq if hasattr(record, "seq") else record.sequence).upper()
    if istraindata:
        return index, identify_seq(record.id, sequence, refseq_pro_list, istraindata)
    return index, identify_seq(record.id, sequence)


def create_refseq_pro_list(gbff_file):
    """Map each GenBank record id to the ``/translation`` of each of its CDS
    features ('' for a CDS without one), as published. Reads plain or gzip."""
    return genbank.read_genbank(gbff_file)[0]


# =============================================================================
# Embedding extraction: DNABERT-S, FastESM2_650, and the ESM2-3B baseline
# =============================================================================

def _embed_file(fasta_file, out_file, alphabet: str, encoder, tokenize, pad_id: int, toks_per_batch: int,
                desc: str, prepared: engine.FileTokens | None) -> tuple[list[str], list[torch.Tensor]]:
    """Embed every sequence of a FASTA file through the engine (the path
    prediction takes), read and tokenized now or ``prepared`` beforehand; log
    the failures beside ``out_file``; ``(ids kept, their embeddings)``."""
    prepared = prepared or engine.file_tokens(fasta_file, alphabet, tokenize)
    ids = prepared.ids
    embeddings, failed = engine.embed_rows(encoder, prepared.rows, ids, pad_id, toks_per_batch,
                                           f"{desc} {os.path.basename(os.fspath(fasta_file))}")
    features.log_failures([(ids[row], *failed[row]) for row in sorted(failed)], os.fspath(fasta_file),
                          os.path.dirname(os.fspath(out_file)) if out_file else ".")
    kept = [row for row in range(len(ids)) if row not in failed]
    return [ids[row] for row in kept], list(embeddings[kept].cpu()) if kept else []


def extract_DNABERT_S(input_file, out_file=None, model_loaded=False, tokenizer=None, model=None,
                      toks_per_batch=engine.DNA_TOKS_PER_BATCH, prepared=None):
    """DNABERT-S embeddings of every sequence of ``input_file``: the mean over
    all tokens, [CLS] and [SEP] included, padding excluded, exactly what the
    published one-at-a-time code computes, but in padded batches.

    Saves (atomically) and returns ``{'nucleotide': [ids], 'data':
    [{'label': id, 'mean_representation': tensor(768)}], 'precision':
    'float32', 'made_by': {...}}``: the published layout plus the dtype the
    model ran in and what the features were made from (the input file's and
    the model files' content). An existing ``out_file`` made from the same
    input by the same model in the same precision is reused; any other is
    made again. Without ``model``, the default DNABERT-S is loaded
    (``model_loaded`` is accepted for compatibility with the published signature).
    ``prepared``: the file's ``engine.file_tokens``, made beforehand (in the
    background, while the device embeds another file).
    """
    if model is None:
        model, tokenizer = load_dnabert_s()
    source = features.made_by(input_file, model)
    reused = features.reusable(out_file, source, "nucleotide")
    if reused is not None:
        return reused
    kept_ids, kept = _embed_file(input_file, out_file, "dna", engine.DnaEncoder(model),
                                 engine.dna_tokenizing(tokenizer), tokenizer.pad_token_id, toks_per_batch,
                                 "DNABERT-S", prepared)
    return features.save_dna_features(kept_ids, kept, model, out_file, source)


def _extract_protein(name: str, load, fasta_file, out_file, model, tokenizer, truncation_seq_length,
                     toks_per_batch, prepared=None):
    """Mean over residue positions only (no BOS/EOS, no padding) of the last
    layer, each sequence cut to ``truncation_seq_length`` residues, as the
    published fair-esm extraction; returned in fp32. Without ``model``,
    ``load()`` gives one; an ``out_file`` made from the same input by the same
    model, precision and truncation is reused, any other made again."""
    if model is None:
        model, tokenizer = load()
    source = features.made_by(fasta_file, model, truncation=truncation_seq_length)
    reused = features.reusable(out_file, source, "proteins")
    if reused is not None:
        return reused
    kept_ids, kept = _embed_file(fasta_file, out_file, "protein", engine.ProteinEncoder(model),
                                 engine.protein_tokenizing(tokenizer, truncation_seq_length), tokenizer.pad_token_id,
                                 toks_per_batch, name, prepared)
    return features.save_protein_features(kept_ids, kept, model, out_file, source)


def extract_fast_esm(fasta_file, out_file=None, model=None, tokenizer=None,
                     truncation_seq_length=engine.PROTEIN_TRUNCATION, toks_per_batch=engine.PROTEIN_TOKS_PER_BATCH):
    """FastESM2_650 embeddings (1280-d) of every protein of ``fasta_file``.

    Batches by token budget (longest first, BOS/EOS counted), splits a batch
    that runs out of GPU memory, logs sequences that still fail to
    ``extraction_failures.log`` beside ``out_file`` and goes on, and refuses
    any embedding that is not the model's width of finite values. Saves
    (atomically) and returns ``{'proteins': [ids], 'data': [tensor(1280)],
    'precision': dtype the model ran in, 'made_by': {...}}`` in input order;
    an existing ``out_file`` made from the same input by the same model in
    the same precision is reused, any other made again. Without ``model``,
    the default FastESM2_650 is loaded.
    """
    return _extract_protein(pins.FASTESM2_650.name, load_fast_esm, fasta_file, out_file, model, tokenizer,
                            truncation_seq_length, toks_per_batch)


def extract_esm(fasta_file, model_location=pins.ESM2_3B.hub_id, truncation_seq_length=engine.PROTEIN_TRUNCATION,
                toks_per_batch=engine.PROTEIN_TOKS_PER_BATCH, out_file=None, model_loaded=False, model=None, alphabet=None):
    """The published ESM2-3B baseline (2560-d), through transformers instead
    of fair-esm, with the published pooling; ``alphabet`` is the tokenizer.
    Same batching, failure handling and output layout as ``extract_fast_esm``.
    ``model_loaded`` is accepted for compatibility: a model is loaded from
    ``model_location`` whenever ``model`` is not given."""
    return _extract_protein(pins.ESM2_3B.name, lambda: load_esm2_3b(model_location), fasta_file, out_file, model,
                            alphabet, truncation_seq_length, toks_per_batch)


def extract_protein(pipeline: loaders.Pipeline, fasta_file, out_file, model, tokenizer,
                    toks_per_batch=engine.PROTEIN_TOKS_PER_BATCH, prepared=None):
    """Protein features of ``fasta_file`` with the pipeline's protein model (``prepared``: as
    ``extract_DNABERT_S``'s)."""
    return _extract_protein(pipeline.protein.name, pipeline.load_protein, fasta_file, out_file, model, tokenizer,
                            engine.PROTEIN_TRUNCATION, toks_per_batch, prepared)


# =============================================================================
# Merging DNA and protein features
# =============================================================================

def merge_data(DNABERT_S_data, ESM_data, merged_file, data_type=None, protein_dim=pins.PROTEIN_DIM, chunk_length=None):
    """Join DNABERT-S and protein features by sequence id into
    ``{'ids', 'data': tensor(n, 768 + protein_dim)}`` (plus ``'labels': [1]``
    for ``data_type='viral'``, ``[0]`` for ``'host'``, as published), and
    ``'precision': {'dna': ..., 'protein': ...}`` when both feature files
    record the dtype their encoder ran in, and ``'chunk_length'`` when given.

    Both inputs and the result are checked before anything is written
    (``DimensionError`` names the expected and actual size, the sequence and
    the file): 768 + 1280 = 2048 values a row for FastESM2_650. Unlike the
    published code, an id present in only one file is left out instead of
    misaligning ids and rows; those ids are returned.
    """
    if data_type is not None and data_type not in features.LABELS:
        raise errors.InputError(f"data_type must be 'viral', 'host' or None, got {data_type!r}")
    dna = features.load_feature_file(DNABERT_S_data, "nucleotide")
    protein = features.load_feature_file(ESM_data, "proteins")
    dna_vectors = features.feature_vectors(DNABERT_S_data, dna["nucleotide"],
                                  [item["mean_representation"] for item in dna["data"]], pins.DNA_DIM)
    protein_vectors = features.feature_vectors(ESM_data, protein["proteins"], protein["data"], protein_dim)

    ids = [i for i in dna["nucleotide"] if i in protein_vectors]
    left_out = [i for i in dna["nucleotide"] if i not in protein_vectors] + \
               [i for i in protein["proteins"] if i not in dna_vectors]
    if not ids:
        raise errors.InputError(f"{DNABERT_S_data} and {ESM_data} have no sequence id in common")
    data = torch.stack([torch.cat((dna_vectors[i], protein_vectors[i])) for i in ids])
    if data.shape[1] != pins.DNA_DIM + protein_dim:
        raise errors.DimensionError(pins.DNA_DIM + protein_dim, data.shape[1], ids[0], f"{merged_file} (merged)")
    precision = {"dna": dna["precision"], "protein": protein["precision"]} \
        if "precision" in dna and "precision" in protein else None
    features.save_merged_features(ids, data, merged_file, precision, features.LABELS.get(data_type), chunk_length)
    if left_out:
        log.logger.warning(f"{merged_file}: {len(left_out)} ids are not in both feature files and were left out "
                       f"(first: {', '.join(left_out[:3])})")
    return left_out


# =============================================================================
# The classifier and its checkpoints
# =============================================================================

class MLPClassifier(torch.nn.Module):
    """The published classifier: Linear -> BatchNorm -> ReLU -> Dropout(0.5)
    -> Linear, Xavier-initialised (same attribute names, so published weights
    load into it)."""

    def __init__(self, input_dim, hidden_dim, num_class):
        super().__init__()
        self.hidden_layer = torch.nn.Linear(input_dim, hidden_dim)
        self.bn1 = torch.nn.BatchNorm1d(hidden_dim)
        self.output_layer = torch.nn.Linear(hidden_dim, num_class)
        self.dropout = torch.nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self):
        torch.nn.init.xavier_uniform_(self.hidden_layer.weight)
        torch.nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = torch.nn.functional.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))


def save_checkpoint(model: MLPClassifier, path, pipeline: str = "fastesm650", chunk_length: int | None = None,
                    encoder_precision: dict | None = None, **training) -> dict:
    """Save the classifier's weights with the metadata that identifies what it
    was trained on (atomically): the pipeline, the chunk length of its
    training frames and the dtypes the encoders ran in to make its features.
    ``training`` adds details such as epochs. A calibration beside ``path``
    belonged to the classifier it replaces and is removed."""
    metadata = checkpoints.checkpoint_metadata(model.hidden_layer.out_features, model.output_layer.out_features,
                                               pipeline, chunk_length, encoder_precision, **training)
    checkpoints.write_checkpoint({key: value.detach().cpu() for key, value in model.state_dict().items()},
                                 metadata, path)
    return metadata


def _classifier_state(input_dim: int, hidden_dim: int) -> dict:
    return MLPClassifier(input_dim, hidden_dim, calls.NUM_CLASSES).state_dict()


def load_checkpoint(path, pipeline: str | None = None, device="cpu",
                    chunk_length: int | None = None) -> tuple[MLPClassifier, dict]:
    """Load a classifier for ``pipeline`` (default: the one its metadata names),
    every tensor checked (see ``virnucpro.scoring.checkpoints.read_classifier``); the
    published pickled classifiers are read without running any code in them.
    Returns ``(model in eval mode, metadata)``."""
    state, metadata, pipeline = checkpoints.read_classifier(path, pipeline, chunk_length, _classifier_state)
    model = MLPClassifier(loaders.PIPELINES[pipeline].input_dim, state["hidden_layer.weight"].shape[0], calls.NUM_CLASSES)
    model.load_state_dict(state)
    return model.to(device).eval(), metadata
