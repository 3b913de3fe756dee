"""GenBank annotations: the CDS translations the training selection keeps frames of, and each record's lineage."""
from __future__ import annotations

import os

from .errors import InputError
from .files import open_text


def read_genbank(gbff_file) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """One pass over a GenBank file (plain or compressed): the ``/translation``
    of each CDS per record id ('' for a CDS without one, as published), and
    each record's ``{'organism', 'taxonomy'}`` (its lineage, as GenBank lists it)."""
    from Bio import SeqIO

    proteins, lineages = {}, {}
    with open_text(gbff_file) as handle:
        try:
            for record in SeqIO.parse(handle, "genbank"):
                proteins[record.id] = [feature.qualifiers.get("translation", [""])[0]
                                       for feature in record.features if feature.type == "CDS"]
                lineages[record.id] = {"organism": record.annotations.get("organism", ""),
                                       "taxonomy": list(record.annotations.get("taxonomy", []))}
        except ValueError as error:
            raise InputError(f"{os.fspath(gbff_file)}: not a readable GenBank file ({error})") from None
    return proteins, lineages
