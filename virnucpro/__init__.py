"""VirNucPro: viral sequences among DNA reads and contigs, from DNABERT-S and
protein language-model embeddings of their stop-free frames.

The card's functions are in ``units`` (beside this package); every other part
of the tool is a module here, one responsibility each, imports flowing one way
(nothing here imports ``units`` or a script). docs/layout.md has the table:

- errors, log, cli, files: one-line errors, the tool's messages, how scripts run, files in and out
- fasta, chunks, frames, genbank: sequences in; chunks and the one id format; frames; annotations
- pins, modelfiles, loaders, dnabert_s, devices, precision: what is downloaded, where models are,
  how they load, the device and the dtypes
- engine, features, checkpoints, calibration, calls: embedding and scoring, feature files,
  classifier checkpoints, calibrated probabilities, the decision rules
- shards, assembly, outputs, runs, predict, plots: a prediction run and its result files
- genomes, selection, training, splits, metrics, evaluation, report: training data, training,
  held-out splits and the evaluation
- fetching, random_models, synthetic, published, benchmarks, host_ceiling: downloads, stand-in
  models and inputs, the published per-codon method, timing
"""
__version__ = "2.0.0.dev0"
