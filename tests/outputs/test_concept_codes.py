"""Text prompts -> DICOM coded concepts: SNOMED CT for known anatomy, laterality as a modifier,
a documented local code for the rest, and a user table checked key by key."""

from __future__ import annotations

import logging

import pytest

from medsam3.errors import UserError
from medsam3.outputs.concept_codes import LOCAL_SCHEME, CodeTableError, code_prompt, load_code_table


def _triple(code):
    return (code.value, code.scheme_designator, code.meaning)


@pytest.mark.parametrize(
    ("prompt", "category", "type_"),
    [
        ("liver", "91723000", ("10200004", "SCT", "Liver")),
        ("Spleen", "91723000", ("78961009", "SCT", "Spleen")),
        ("kidney", "91723000", ("64033007", "SCT", "Kidney")),
        ("liver tumour", None, None),  # not a synonym: local, checked below
        ("gall-bladder", "91723000", ("28231008", "SCT", "Gallbladder")),
        ("tumor", "49755003", ("108369006", "SCT", "Neoplasm")),
        ("grey matter", "85756007", ("389081007", "SCT", "Gray Matter")),
    ],
)
def test_snomed_codes_for_known_prompts(prompt, category, type_):
    concept = code_prompt(prompt)
    if category is None:
        assert concept.is_local
        return
    assert concept.source == "SNOMED CT" and concept.modifier is None
    assert concept.category.value == category and concept.category.scheme_designator == "SCT"
    assert (concept.type.value, concept.type.scheme_designator) == type_[:2]
    assert concept.type.meaning.lower() == type_[2].lower()
    assert concept.label == prompt


@pytest.mark.parametrize(
    ("prompt", "side", "rt"),
    [
        ("left kidney", ("7771000", "SCT", "Left"), "18639004"),
        ("Kidney right", ("24028007", "SCT", "Right"), "9846003"),
        ("left_lung", ("7771000", "SCT", "Left"), "44029006"),
        ("right adrenal gland", ("24028007", "SCT", "Right"), "23451007"),  # no pre-coordinated code: the organ
    ],
)
def test_laterality_is_a_modifier_of_the_organ(prompt, side, rt):
    concept = code_prompt(prompt)
    organ = code_prompt(prompt.replace("_", " ").lower().replace("left", "").replace("right", "").strip())
    assert _triple(concept.type) == _triple(organ.type)
    assert _triple(concept.modifier) == side
    assert concept.rt_code.value == rt


def test_left_ventricle_is_its_own_structure_not_a_lateral_ventricle():
    concept = code_prompt("left ventricle")
    assert concept.type.value == "87878005" and concept.modifier is None


def test_unknown_prompt_gets_a_stable_local_code_and_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="medsam3.outputs.concept_codes")
    a, b = code_prompt("Xyzzy  Plumbus"), code_prompt("xyzzy plumbus")
    assert a.is_local and a.type.scheme_designator == a.category.scheme_designator == LOCAL_SCHEME
    assert a.type.value == b.type.value and len(a.type.value) <= 16  # same prompt, same code; fits SH
    assert a.type.meaning == "Xyzzy  Plumbus" and a.label == "Xyzzy  Plumbus"
    assert code_prompt("other thing").type.value != a.type.value
    assert any("no standard code" in r.getMessage() and "Xyzzy" in r.getMessage() for r in caplog.records)


def test_user_table_overrides_and_extends(tmp_path):
    path = tmp_path / "codes.yaml"
    path.write_text(
        "Portal-Vein:\n"
        "  category: [91723000, SCT, Anatomical Structure]\n"
        "  type: {value: '32764006', scheme: SCT, meaning: Portal vein}\n"
        "left hippocampus:\n"
        "  category: [91723000, SCT, Anatomical Structure]\n"
        "  type: [5300000, SCT, Hippocampus]\n"
        "  modifier: [7771000, SCT, Left]\n"
    )
    table = load_code_table(path)
    pv = code_prompt("portal vein", table)
    assert pv.source == "user table" and pv.type.value == "32764006"
    hc = code_prompt("Left Hippocampus", table)
    assert hc.type.value == "5300000" and hc.modifier.value == "7771000"
    assert code_prompt("liver", table).source == "SNOMED CT"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("liver:\n  category: [91723000, SCT, Anatomical Structure]\n  typ: [1, SCT, x]\n", "unknown key"),
        ("liver:\n  category: [91723000, SCT, Anatomical Structure]\n", "missing type"),
        ("liver:\n  category: [91723000, SCT]\n  type: [1, SCT, x]\n", "[value, scheme, meaning]"),
        ("liver:\n  category: [91723000, SCT, A]\n  type: [12345678901234567, SCT, x]\n", "16"),
        ("- liver\n", "mapping"),
        ("liver: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_user_tables_are_user_errors_naming_the_entry(tmp_path, text, needle):
    path = tmp_path / "codes.yaml"
    path.write_text(text)
    with pytest.raises(CodeTableError) as info:
        load_code_table(path)
    assert isinstance(info.value, UserError)
    assert needle in str(info.value) and str(path) in str(info.value)
