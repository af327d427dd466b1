#!/usr/bin/env python3
"""Known vulnerabilities in the installed dependencies (pip-audit), with what to pin.

Audits the environment this Python runs in (install the extras you use first, e.g.
``pip install -e '.[app,test,audit]'``) with pip-audit against PyPI's vulnerability data, then OSV.
Where neither answers per version (a registry proxy that serves only ``/pypi/<name>/json``, as on
the development machine of December 2026), it falls back to that endpoint: its ``vulnerabilities``
describe the latest release, so a package at its latest release is checked, and one behind it is
listed as not checkable here. Prints one line per vulnerable package with the fixed versions, lists
the extras of pyproject.toml that are installed, and exits 1 when something is vulnerable, 3 when no
vulnerability data was reachable.

  python scripts/audit_deps.py                 # the whole environment
  python scripts/audit_deps.py --json out.json # pip-audit's full report too
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10: pip-audit brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def installed_extras() -> dict[str, list[str]]:
    """Extra -> its requirements that are not installed (empty: the extra is fully installed)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    missing = {}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        absent = []
        for text in reqs:
            req = Requirement(text)
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                absent.append(req.name)
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                absent.append(f"{req.name} {version} (wants {req.specifier})")
        missing[extra] = absent
    return missing


def run_pip_audit(service: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--format", "json", "--output", str(out)]
    cmd += ["--vulnerability-service", service, "--timeout", "30"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def project_api_fallback() -> int:
    """PyPI's project endpoint for each installed distribution: its latest release's vulnerabilities."""
    import httpx

    print("vulnerability data: PyPI /pypi/<name>/json (latest releases only)")
    vulnerable, behind, unknown, checked = [], [], [], 0
    with httpx.Client(timeout=20, follow_redirects=True) as client:
        for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
            name, version = dist.metadata["Name"], dist.version
            try:
                response = client.get(f"https://pypi.org/pypi/{name}/json")
            except httpx.HTTPError as exc:
                unknown.append(f"{name} ({type(exc).__name__})")
                continue
            if response.status_code != 200:
                unknown.append(f"{name} (HTTP {response.status_code})")
                continue
            data = response.json()
            latest = data["info"]["version"]
            if version != latest:
                behind.append(f"{name} {version} (latest {latest})")
                continue
            checked += 1
            for vuln in data.get("vulnerabilities") or []:
                fixes = ", ".join(vuln.get("fixed_in") or []) or "no fixed release yet"
                vulnerable.append(f"{name} {version}: {vuln.get('id')} (fixed in {fixes})")
    if not checked and not behind:
        print("no vulnerability data was reachable; nothing was audited", file=sys.stderr)
        return 3
    print(f"{checked} distributions at their latest release checked; {len(behind)} behind it (not checkable here):")
    for line in behind:
        print(f"  behind: {line}")
    if unknown:
        print(f"{len(unknown)} not on PyPI or unreachable: {', '.join(unknown)}")
    for line in vulnerable:
        print(f"  VULNERABLE {line}")
    print(f"{len(vulnerable)} vulnerable distribution(s) among those checked")
    return 1 if vulnerable else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="also write pip-audit's JSON report here")
    args = p.parse_args(argv)
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        print("pip-audit is not installed: pip install -e '.[audit]'", file=sys.stderr)
        return 3
    for extra, absent in installed_extras().items():
        print(f"extra [{extra}]: " + ("installed" if not absent else f"not fully installed ({', '.join(absent)})"))
    report = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        for service in ("pypi", "osv"):
            done = run_pip_audit(service, out)
            if out.is_file() and out.stat().st_size:
                candidate = json.loads(out.read_text())
                deps = candidate.get("dependencies", [])
                if deps and all(d.get("skip_reason") for d in deps):
                    print(f"{service}: every distribution 'not found' (no per-version data here)", file=sys.stderr)
                    continue
                report = candidate
                print(f"vulnerability data: pip-audit with {service} (exit code {done.returncode})")
                break
            last = (done.stderr or done.stdout).strip().splitlines()[-1:]
            print(f"{service}: no answer ({last[0][:200] if last else done.returncode})", file=sys.stderr)
    if report is None:
        return project_api_fallback()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    print(f"{len(deps)} installed distributions audited, {len(skipped)} skipped (not on PyPI, e.g. editable installs)")
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release yet"
            print(f"  {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes}); pin {dep['name']}>={fixes}")
    print(f"{len(vulnerable)} vulnerable distribution(s)")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    raise SystemExit(main())
