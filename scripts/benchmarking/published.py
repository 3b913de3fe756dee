"""The published method, written plainly: six-frame translation a codon at a
time and the frame selection of ``identify_seq``, with ``any(frame in protein
for protein in proteins)`` per frame in training mode. The reference the
vectorised sequence layer (``frames.py``) is tested and benchmarked against.
"""
from __future__ import annotations

from virnucpro.sequences.frames import AMBIGUOUS_BASES, CODON_TABLE, reverse_complement


def published_translate(sequence: str) -> list[str]:
    """Six-frame translation as the published ``translate_dna``: a dictionary lookup per codon."""
    def frame_protein(seq, start):
        return "".join(CODON_TABLE.get(seq[i:i + 3], "") for i in range(start, len(seq) - 2, 3))
    reverse = reverse_complement(sequence)
    return [frame_protein(sequence, f) for f in range(3)] + [frame_protein(reverse, f) for f in range(3)]


def published_frames(seqid: str, sequence: str, proteins=None) -> list[tuple[str, str, str]]:
    """Published identify_seq semantics; ``proteins`` given means training mode."""
    if proteins is not None and any(base in sequence for base in AMBIGUOUS_BASES):
        return []
    frames = []
    for number, protein in enumerate(published_translate(sequence), start=1):
        if "*" in protein:
            continue
        if proteins is not None and not any(protein in reference for reference in proteins):
            continue
        span = 3 * len(protein) + 1
        if number <= 3:
            frames.append((f"{seqid}F{number}", sequence[number - 1:number - 1 + span], protein))
        else:
            reverse = reverse_complement(sequence)
            frames.append((f"{seqid}R{number - 3}", reverse[number - 4:number - 4 + span], protein))
    return frames
