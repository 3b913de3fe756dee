"""VirNucPro: viral sequences among DNA reads and contigs, from DNABERT-S and
protein language-model embeddings of their stop-free frames.

The card's functions are in ``units`` (beside this package). Here: the basic
modules (errors, log, files, devices, precision, runs) and a room per concern,
each importing only the basics and the rooms before it: ``sequences``,
``models``, ``scoring``, ``prediction``, ``training``, ``commands``.
docs/layout.md has the table of their modules.
"""
__version__ = "2.0.0.dev0"
