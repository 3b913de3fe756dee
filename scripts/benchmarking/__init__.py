"""What only the benchmarks and the tests use: random-weight models, synthetic inputs, the published per-codon method, timing. Not installed."""
