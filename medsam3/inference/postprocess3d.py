"""3D clean-up of per-prompt binary volumes: keep the largest connected component, fill holes.

Both are scipy.ndimage operations on the whole volume (not slice by slice), so a structure
that a few slices missed or split stays one object. Connectivity is 26 (faces, edges and
corners) by default, as most 3D tools use; ``connectivity=1`` gives 6-connectivity.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from scipy import ndimage

from ..data.coco_records import concept_key
from ..errors import UserError

__all__ = [
    "clean_mask",
    "fill_holes",
    "keep_largest_component",
    "largest_component_flags",
    "largest_component_option",
    "RecordedConcepts",
    "voxel_volume_ml",
]


class RecordedConcepts(frozenset):
    """The concepts the weights record for the clean-up: prompts among them get it, the rest do not.

    Unlike names given on the command line (where a name that is no prompt is a typo, refused), the
    weights list every concept they know, most of which a given run does not ask for.
    """


LargestComponent = bool | Collection[str]
"""True: every prompt; a collection of concept names: those prompts only (organs, not multifocal tumours);
a :class:`RecordedConcepts`: the weights' own list."""


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    connectivity = ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in 1..{ndim} for a {ndim}D mask, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def keep_largest_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of ``mask`` (bool, same shape); an empty mask stays empty.

    Ties (two components of the same size) keep the one with the lowest label, i.e. the first in
    C order, so the result is deterministic.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def largest_component_option(
    values: Sequence[str] | None, off: bool = False, recorded: Collection[str] = ()
) -> LargestComponent:
    """The ``--largest-component [CONCEPT ...]`` / ``--no-largest-component`` flags: alone -> every prompt,
    names -> those, ``off`` -> none; neither -> the concepts the weights record (``recorded``), if any."""
    if off:
        if values is not None:
            raise UserError("--largest-component and --no-largest-component contradict each other; give one")
        return False
    if values is None:
        return RecordedConcepts(concept_key(c) for c in recorded) if recorded else False
    return tuple(values) or True


def largest_component_flags(option: LargestComponent, prompts: Sequence[str]) -> list[bool]:
    """Per prompt, whether it gets the largest-component clean-up.

    Concept names are matched case-insensitively; a name that is none of ``prompts`` is an error (a
    typo would otherwise leave the organ uncleaned without a word).
    """
    if isinstance(option, bool):
        return [option] * len(prompts)
    if isinstance(option, RecordedConcepts):
        return [concept_key(p) in option for p in prompts]
    wanted = {c.strip().lower() for c in option}
    unknown = sorted(wanted - {p.strip().lower() for p in prompts})
    if unknown:
        raise UserError(
            f"--largest-component names {', '.join(repr(u) for u in unknown)}, which is not one of the prompts "
            f"({', '.join(prompts)}); name prompts exactly as given, or pass the flag alone for every prompt"
        )
    return [p.strip().lower() in wanted for p in prompts]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities enclosed in 3D (background not connected to the volume's border)."""
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


def clean_mask(
    mask: np.ndarray, largest_component: bool = False, holes: bool = False, connectivity: int | None = None
) -> np.ndarray:
    """Apply the chosen steps: largest component first, then hole filling."""
    out = np.asarray(mask, dtype=bool)
    if largest_component:
        out = keep_largest_component(out, connectivity)
    if holes:
        out = fill_holes(out)
    return out


def voxel_volume_ml(spacing) -> float:
    """Volume of one voxel in millilitres from its spacing in mm (1 ml = 1000 mm^3)."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0
