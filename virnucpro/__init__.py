"""VirNucPro: viral sequences among DNA reads and contigs, from DNABERT-S and
protein language-model embeddings of their stop-free frames.

The card's functions are in ``units`` (beside this package); every other part
of the tool is a module here, each one responsibility, imports flowing one way:

- errors, log, cli, files: one-line errors, messages, how scripts run, reading and writing files
- fasta, chunks, frames, genbank: sequences in, chunks and the id format, translation and frames
- pins, modelfiles, loaders, dnabert_s, devices, precision: the models, where they are, how they load
- engine, features, checkpoints, calibration, calls: embedding and scoring, feature files,
  classifiers, calibrated probabilities, the decision rules
- shards, outputs, assembly, runs, predict, plots: a prediction run and its result files
- genomes, selection, training, splits, metrics, evaluation, report: building, training and evaluating a model
- fetching, random_models, published, synthetic: downloads, stand-in models and inputs for tests and benchmarks
"""
__version__ = "2.0.0.dev0"
