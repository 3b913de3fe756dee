#!/usr/bin/env python3
"""Extract DNABERT-S and FastESM2_650 features of the training frames.

Not available yet: the embedding extraction is still being built (see README,
"Pipeline"). This command says so instead of pretending to work.
"""
import argparse

import units


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding the identified_* files (default: data)")
    parser.parse_args(argv)
    raise units.InputError("feature extraction is not implemented yet (README, Pipeline)")


if __name__ == "__main__":
    units.run_cli(main)
