"""The steps of VirNucPro, one script each; installed as virnucpro.scripts, which the virnucpro command
runs (scripts/command.py). prediction.py, features_extract.py and train_fastesm.py stay at the top of the
repository, as published, and are linked here."""
