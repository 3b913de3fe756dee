"""Sequences in: FASTA and FASTQ, chunks, the six frames and the stop-free ones, GenBank annotations, training frames."""
