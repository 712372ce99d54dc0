"""A built wheel carries the built-in catalog: installed without the checkout, it still loads."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_loads_the_catalog(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(wheels)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("pytest_securitynet-*.whl")
    venv = tmp_path / "venv"
    # The venv sees the system's torch and friends through a plain path entry, which (unlike
    # --system-site-packages) runs none of the system's .pth hooks, such as an editable install
    # of this checkout: the project itself comes only from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "system-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    f"--target={venv_site}", str(wheel)], check=True, cwd=tmp_path)
    probe = ("import pytest_securitynet, pytest_securitynet.catalog.entries as e; "
             "c = e.load_catalog(); "
             "print(pytest_securitynet.__file__); print(e.BUILTIN_CATALOG); print(len(c.models), len(c.datasets))")
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on the path
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=clean_env).stdout
    package_file, catalog_dir, counts = out.strip().splitlines()
    assert str(venv) in package_file and str(ROOT) not in package_file
    assert catalog_dir.startswith(str(venv)) and catalog_dir.endswith("catalog/builtin")
    models, datasets = map(int, counts.split())
    assert models > 500 and datasets > 10
    reported = Path(catalog_dir) / "reported" / "securitynet.csv"
    assert reported.read_bytes() == (ROOT / "catalog" / "reported" / "securitynet.csv").read_bytes()
