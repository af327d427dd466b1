"""What a reviewer would grep for, checked on every run: no pickle on user files, no swallowed errors."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [*(REPO / "medsam3").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), *REPO.glob("*.py")],
    key=str,
)


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _unsafe_loads(path: Path) -> list[str]:
    """torch.load without weights_only=True, pickle/joblib/dill loads, np.load(allow_pickle=True)."""
    found = []
    for call, name in _calls(path):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{call.lineno}: {name}"
        keywords = {k.arg: k.value for k in call.keywords}
        if name.endswith("torch.load"):
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{where} without weights_only=True")
        if name.startswith(("pickle.", "cPickle.", "joblib.", "dill.")) or "Unpickler" in name:
            found.append(where)
        if name.endswith("read_pickle"):
            found.append(where)
        if name.endswith(("np.load", "numpy.load")):
            allow = keywords.get("allow_pickle")
            if not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                found.append(f"{where} with allow_pickle")
    return found


def test_no_pickle_on_user_files():
    """Loading a file must never run code from it: tensors only (torch.load(weights_only=True))."""
    found = [line for path in SOURCES if "/medsam3/" in str(path) for line in _unsafe_loads(path)]
    assert not found, "\n".join(found)


def test_the_pickle_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, pickle, numpy as np\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                   "pickle.loads(b)\nnp.load(p, allow_pickle=True)\n")  # fmt: skip
    assert len(_unsafe_loads(bad)) == 4


def _swallowed(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.ExceptHandler):
            continue
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node.lineno}"
        if node.type is None:
            found.append(f"{where}: bare 'except:'")
        body_is_nothing = all(
            isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            for s in node.body
        )
        if body_is_nothing:
            found.append(f"{where}: 'except {ast.unparse(node.type) if node.type else ''}: pass' swallows the error")
    return found


def test_no_swallowed_exceptions():
    """Every caught error is reported, turned into a user error, or re-raised: no ``except ...: pass``."""
    found = [line for path in SOURCES for line in _swallowed(path)]
    assert not found, "\n".join(found)


def test_the_swallow_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("try:\n    x = 1\nexcept OSError:\n    pass\ntry:\n    y = 2\nexcept:\n    ...\n")
    assert len(_swallowed(bad)) == 3  # the pass, the bare except, and its '...' body
