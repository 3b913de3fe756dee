"""A prediction run: its input, shards, the assembly of the result files, the output folder, the plots."""
