"""Text prompt -> coded concept (Segmented Property Category / Type, laterality) for DICOM SEG and RTSTRUCT.

Every segment of a DICOM Segmentation must say *what* it is in codes a PACS or a viewer can read,
not only in free text. The codes come, in this order, from:

1. the user's own table (``output.codes`` in the config, or ``--codes FILE``; see :func:`load_code_table`);
2. the SNOMED CT codes pydicom ships (``pydicom.sr.codedict.codes.SCT``), reached through a small
   synonym table (``_SYNONYMS``: "tumour" -> Neoplasm, "gall bladder" -> Gallbladder, ...);
3. a few SNOMED CT codes pydicom does not name (``_OWN_CODES``; source: the SNOMED CT International
   Edition browser, https://browser.ihtsdotools.org, and DICOM PS3.16 CID 7151/7153).

Laterality is a modifier, not part of the organ: "left kidney" -> Kidney (64033007) with the
Segmented Property Type Modifier Left (7771000), as DICOM PS3.3 C.8.20.2 and 3D Slicer encode it.
RTSTRUCT has no modifier, so where SNOMED CT has a pre-coordinated concept ("Left kidney",
18639004) the RT ROI Identification Code uses it.

A prompt with no known code gets the local coding scheme ``99MEDSAM3`` (DICOM PS3.3 8.2: private
schemes start with "99"): category ``99MEDSAM3 C0`` "Text-prompted concept", type ``99MEDSAM3 P<hash>``
whose meaning is the prompt itself (the hash of the normalised prompt, so one prompt always gets the
same code). The free text is also the segment label, and one log line says so.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from ..errors import UserError

__all__ = [
    "LOCAL_SCHEME",
    "LOCAL_SCHEME_NAME",
    "CodeTableError",
    "ConceptCode",
    "code_prompt",
    "load_code_table",
    "local_scheme_identification",
    "normalise_prompt",
]

logger = logging.getLogger(__name__)

LOCAL_SCHEME = "99MEDSAM3"
LOCAL_SCHEME_NAME = "medsam3 local codes for text prompts without a standard code"
LOCAL_CATEGORY = Code("C0", LOCAL_SCHEME, "Text-prompted concept")

_SCT = codes.SCT
ANATOMY = _SCT.AnatomicalStructure  # 91723000
ABNORMAL = _SCT.MorphologicallyAbnormalStructure  # 49755003
TISSUE = _SCT.Tissue  # 85756007

# SNOMED CT concepts pydicom's dictionary has no attribute for (checked with pydicom 3.0).
_OWN_CODES = {
    "myocardium": Code("74281007", "SCT", "Myocardium"),
    "left kidney": Code("18639004", "SCT", "Left kidney"),
    "right kidney": Code("9846003", "SCT", "Right kidney"),
    "left lung": Code("44029006", "SCT", "Left lung"),
    "right lung": Code("3341006", "SCT", "Right lung"),
}

# normalised prompt -> (category, type). Synonyms share an entry.
_SYNONYMS: dict[str, tuple[Code, Code]] = {}


def _add(category: Code, code: Code, *names: str) -> None:
    for name in names:
        _SYNONYMS[name] = (category, code)


_add(ANATOMY, _SCT.Liver, "liver", "hepar")
_add(ANATOMY, _SCT.Spleen, "spleen")
_add(ANATOMY, _SCT.Kidney, "kidney", "kidneys", "renal")
_add(ANATOMY, _SCT.Pancreas, "pancreas")
_add(ANATOMY, _SCT.Lung, "lung", "lungs")
_add(ANATOMY, _SCT.Heart, "heart")
_add(ANATOMY, _SCT.Brain, "brain")
_add(ANATOMY, _SCT.Aorta, "aorta")
_add(ANATOMY, _SCT.Stomach, "stomach")
_add(ANATOMY, _SCT.Gallbladder, "gallbladder", "gall bladder")
_add(ANATOMY, _SCT.Bladder, "bladder", "urinary bladder")
_add(ANATOMY, _SCT.Prostate, "prostate")
_add(ANATOMY, _SCT.Esophagus, "esophagus", "oesophagus")
_add(ANATOMY, _SCT.Duodenum, "duodenum")
_add(ANATOMY, _SCT.Colon, "colon")
_add(ANATOMY, _SCT.SmallIntestine, "small intestine", "small bowel")
_add(ANATOMY, _SCT.AdrenalGland, "adrenal gland", "adrenal")
_add(ANATOMY, _SCT.Trachea, "trachea")
_add(ANATOMY, _SCT.Bone, "bone", "bones")
_add(ANATOMY, _SCT.Vertebra, "vertebra", "vertebrae")
_add(ANATOMY, _SCT.Rib, "rib", "ribs")
_add(ANATOMY, _SCT.Femur, "femur")
_add(ANATOMY, _SCT.Skull, "skull")
_add(ANATOMY, _SCT.Thyroid, "thyroid", "thyroid gland")
_add(ANATOMY, _SCT.Breast, "breast")
_add(ANATOMY, _SCT.Uterus, "uterus")
_add(ANATOMY, _SCT.Skin, "skin")
_add(ANATOMY, _SCT.InferiorVenaCava, "inferior vena cava", "ivc")
_add(ANATOMY, _SCT.PortalVein, "portal vein")
_add(ANATOMY, _SCT.LeftVentricle, "left ventricle", "lv")
_add(ANATOMY, _SCT.RightVentricle, "right ventricle", "rv")
_add(ANATOMY, _SCT.LeftAtrium, "left atrium")
_add(ANATOMY, _OWN_CODES["myocardium"], "myocardium", "left ventricular myocardium")
_add(ANATOMY, _SCT.Cerebellum, "cerebellum")
_add(ANATOMY, _SCT.LymphNode, "lymph node", "lymph nodes")
_add(TISSUE, _SCT.WhiteMatter, "white matter")
_add(TISSUE, _SCT.GrayMatter, "gray matter", "grey matter")
_add(TISSUE, _SCT.Fat, "fat")
_add(TISSUE, _SCT.Muscle, "muscle")
_add(ABNORMAL, _SCT.Neoplasm, "tumor", "tumour", "neoplasm")
_add(ABNORMAL, _SCT.Lesion, "lesion", "lesions")
_add(ABNORMAL, _SCT.Mass, "mass")
_add(ABNORMAL, _SCT.Nodule, "nodule")
_add(ABNORMAL, _SCT.Cyst, "cyst")
_add(ABNORMAL, _SCT.Hemorrhage, "hemorrhage", "haemorrhage")
_add(ABNORMAL, _SCT.Edema, "edema", "oedema")
_add(ABNORMAL, _SCT.Necrosis, "necrosis")

_LATERALITY = {
    "left": _SCT.Left,
    "right": _SCT.Right,
    "bilateral": _SCT.Bilateral,
    "both": _SCT.Bilateral,
}


@dataclass(frozen=True)
class ConceptCode:
    """What a segment is, coded: category and type, optional laterality, and where the codes came from.

    ``rt_code`` is the single code RTSTRUCT's RT ROI Identification Code Sequence carries (the
    pre-coordinated lateral concept when SNOMED CT has one, else ``type``).
    """

    prompt: str
    label: str
    category: Code
    type: Code
    modifier: Code | None = None
    rt_code: Code | None = None
    source: str = "SNOMED CT"  # SNOMED CT | user table | local

    @property
    def is_local(self) -> bool:
        return self.source == "local"


def local_scheme_identification():
    """The Coding Scheme Identification Sequence item that declares ``99MEDSAM3`` in an object using it."""
    from pydicom import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "medsam3"
    return item


def normalise_prompt(prompt: str) -> str:
    """Lower case, '_' and '-' as spaces, single spaces: the key of every code table."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", prompt.strip().lower())).strip()


def _split_laterality(key: str) -> tuple[str, Code | None]:
    words = key.split(" ")
    if len(words) > 1 and words[0] in _LATERALITY:
        return " ".join(words[1:]), _LATERALITY[words[0]]
    if len(words) > 1 and words[-1] in _LATERALITY:
        return " ".join(words[:-1]), _LATERALITY[words[-1]]
    return key, None


def local_code(prompt: str) -> Code:
    """The ``99MEDSAM3`` type code of a prompt: stable (a hash of the normalised text), meaning = the prompt."""
    digest = hashlib.sha1(normalise_prompt(prompt).encode("utf-8")).hexdigest()[:12].upper()
    return Code(f"P{digest}", LOCAL_SCHEME, prompt.strip()[:64])


def code_prompt(prompt: str, table: dict[str, ConceptCode] | None = None) -> ConceptCode:
    """The coded concept of ``prompt``: the user's table, then SNOMED CT (with laterality), else local."""
    key = normalise_prompt(prompt)
    label = prompt.strip()[:64]
    if table and key in table:
        found = table[key]
        return ConceptCode(prompt, label, found.category, found.type, found.modifier, found.rt_code, "user table")
    if key in _SYNONYMS:  # "left ventricle" is an organ of its own, not a lateral "ventricle"
        category, code = _SYNONYMS[key]
        return ConceptCode(prompt, label, category, code, None, code)
    organ, side = _split_laterality(key)
    if side is not None and organ in _SYNONYMS:
        category, code = _SYNONYMS[organ]
        rt = _OWN_CODES.get(f"{'left' if side == _SCT.Left else 'right'} {organ.rstrip('s')}", code)
        return ConceptCode(prompt, label, category, code, side, rt)
    logger.info(
        "prompt %r has no standard code: coded as %s in the local scheme %s (free text in the segment label); "
        "map it with output.codes / --codes",
        prompt,
        local_code(prompt).value,
        LOCAL_SCHEME,
    )
    return ConceptCode(prompt, label, LOCAL_CATEGORY, local_code(prompt), None, local_code(prompt), "local")


class CodeTableError(UserError):
    """A user code table (``--codes`` / ``output.codes``) that cannot be used."""


_CODE_KEYS = ("category", "type", "modifier")


def _code_from(value: Any, where: str) -> Code:
    if isinstance(value, dict):
        unknown = set(value) - {"value", "scheme", "meaning"}
        if unknown or not {"value", "scheme", "meaning"} <= set(value):
            raise CodeTableError(f"{where}: expected keys value, scheme, meaning; got {sorted(value)}")
        parts = [value["value"], value["scheme"], value["meaning"]]
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        parts = list(value)
    else:
        raise CodeTableError(f"{where}: a code is [value, scheme, meaning], e.g. [10200004, SCT, Liver]; got {value!r}")
    text = [str(p).strip() for p in parts]
    if not all(text) or any(isinstance(p, (dict, list, bool)) or p is None for p in parts):
        raise CodeTableError(f"{where}: value, scheme and meaning must be non-empty text, got {parts!r}")
    if len(text[0]) > 16 or len(text[1]) > 16 or len(text[2]) > 64:
        raise CodeTableError(f"{where}: DICOM limits code value/scheme to 16 and meaning to 64 characters")
    return Code(text[0], text[1], text[2])


def load_code_table(path: str | Path) -> dict[str, ConceptCode]:
    """Read a user code table (YAML) and check every key, so a typo fails before the model loads.

    Layout (one entry per prompt; the prompt is matched after :func:`normalise_prompt`)::

        portal vein:
          category: [91723000, SCT, Anatomical Structure]
          type: [32764006, SCT, Portal vein]
        left hippocampus:
          category: [91723000, SCT, Anatomical Structure]
          type: {value: "5300000", scheme: SCT, meaning: Hippocampus}
          modifier: [7771000, SCT, Left]          # optional laterality
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CodeTableError(f"code table {path} not found; give an existing YAML file (--codes / output.codes)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CodeTableError(f"code table {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise CodeTableError(f"code table {path}: expected a mapping of prompt -> {{category, type}}, got {raw!r}")
    table: dict[str, ConceptCode] = {}
    for prompt, entry in raw.items():
        where = f"code table {path}: {prompt!r}"
        if not isinstance(prompt, str) or not prompt.strip():
            raise CodeTableError(f"{where}: the key must be the prompt text")
        if not isinstance(entry, dict):
            raise CodeTableError(f"{where}: expected a mapping with category and type, got {entry!r}")
        unknown = set(entry) - set(_CODE_KEYS)
        if unknown:
            raise CodeTableError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(_CODE_KEYS)}")
        missing = {"category", "type"} - set(entry)
        if missing:
            raise CodeTableError(f"{where}: missing {', '.join(sorted(missing))}")
        category = _code_from(entry["category"], f"{where}.category")
        type_ = _code_from(entry["type"], f"{where}.type")
        modifier = _code_from(entry["modifier"], f"{where}.modifier") if entry.get("modifier") is not None else None
        table[normalise_prompt(prompt)] = ConceptCode(prompt, prompt.strip()[:64], category, type_, modifier, type_)
    return table
