"""GenBank annotations: the CDS translations the training selection keeps frames of, and each record's lineage."""
from __future__ import annotations

import os

from virnucpro.errors import InputError
from virnucpro.files import READ_ERRORS, is_disk_full, open_text


def read_genbank(gbff_file) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """One pass over a GenBank file (plain or compressed): the ``/translation``
    of each CDS per record id ('' for a CDS without one, as published), and
    each record's ``{'organism', 'taxonomy'}`` (its lineage, as GenBank lists it).
    A file that is not GenBank (empty, a FASTA file), damaged, or holding a
    record that cannot be read is refused in one line naming it."""
    from Bio import SeqIO

    name = os.fspath(gbff_file)
    proteins, lineages = {}, {}
    try:
        with open_text(gbff_file) as handle:
            first = next((line.strip() for line in handle if line.strip()), "")
        if not first.startswith("LOCUS"):
            found = f"its first line is {first[:40]!r}" if first else "empty"
            raise InputError(f"{name}: not a GenBank file ({found}; GenBank records begin with LOCUS); give the "
                             "genome's .gbff file")
        with open_text(gbff_file) as handle:
            for record in SeqIO.parse(handle, "genbank"):
                proteins[record.id] = [feature.qualifiers.get("translation", [""])[0]
                                       for feature in record.features if feature.type == "CDS"]
                lineages[record.id] = {"organism": record.annotations.get("organism", ""),
                                       "taxonomy": list(record.annotations.get("taxonomy", []))}
    except READ_ERRORS as error:
        if is_disk_full(error):
            raise
        raise InputError(f"{name}: not a readable GenBank file, or a damaged compressed one "
                         f"({error.__class__.__name__}: {error})") from None
    except (ValueError, AssertionError) as error:           # Biopython's words for a malformed record
        after = f", after {list(proteins)[-1]}" if proteins else ""
        reason = str(error) or "a malformed feature location"
        raise InputError(f"{name}: GenBank record {len(proteins) + 1}{after} cannot be read ({reason}); fix or "
                         "remove that record") from None
    return proteins, lineages
