#!/usr/bin/env python3
"""Predict which sequences of a FASTA file are viral.

    python prediction.py input.fasta 500 model_fastesm650.pth

Not available yet: the embedding extraction and prediction steps are still
being built (see README, "Pipeline"). This command says so instead of
pretending to work.
"""
import argparse

import units


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_fasta", help="FASTA file of reads or contigs (plain or gzipped)")
    parser.add_argument("expect_length", type=int, choices=(300, 500), help="chunk length of the model: 300 or 500")
    parser.add_argument("model_path", help="classifier checkpoint (.pth)")
    parser.parse_args(argv)
    raise units.InputError("prediction is not implemented yet: it needs the extraction step (README, Pipeline)")


if __name__ == "__main__":
    units.run_cli(main)
