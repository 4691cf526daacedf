"""The packages import each other downward only, so that none sits in a circle: ``utils`` at the bottom, then
``models`` and ``datasets``, ``engines`` (which imports neither of those), ``tools``, and ``benchmarks`` on top."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "utils": set(),
    "models": {"utils"},
    "datasets": {"utils"},
    "engines": {"utils"},
    "tools": {"utils", "models", "datasets", "engines"},
    "benchmarks": {"utils", "models", "datasets", "engines", "tools"},
}


def _imported_packages(path: Path) -> set[str]:
    """The top-level names of every absolute import in ``path``, those inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_packages_import_downward_only():
    upward = []
    for package, allowed in MAY_IMPORT.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            wrong = (_imported_packages(path) & set(MAY_IMPORT)) - allowed - {package}
            upward += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(wrong)]
    assert upward == []
