#!/usr/bin/env python3
"""Train the FastESM2_650 classifier (MLP on 2048-d merged features).

Not available yet: training needs the extracted features (see README,
"Pipeline"). This command says so instead of pretending to work.
"""
import argparse

import units


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/data_merge", help="folder of merged features (default: data/data_merge)")
    parser.parse_args(argv)
    raise units.InputError("training is not implemented yet (README, Pipeline)")


if __name__ == "__main__":
    units.run_cli(main)
