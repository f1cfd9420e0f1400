"""Packaging: pyproject.toml's pins are requirements.txt's, and the built wheel holds the ldm_jax
package only, its data files (everything non-Python that git tracks under ldm_jax/) and the
`ldm-jax` console script."""

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins(name):
  """The requirement lines of a requirements file (no comments, no `-r` includes)."""
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    lines = [line.split("#", 1)[0].strip() for line in f]
  return [line for line in lines if line and not line.startswith("-r")]


def project():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def tracked_package_files():
  """(the .py files, the other files) git tracks under ldm_jax/, as paths inside the wheel."""
  out = subprocess.run(["git", "ls-files", "ldm_jax"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.split()
  files = [f for f in out if os.path.exists(os.path.join(ROOT, f))]
  return [f for f in files if f.endswith(".py")], [f for f in files if not f.endswith(".py")]


def test_dependencies_are_the_requirements_pins():
  p = project()
  assert p["dependencies"] == pins("requirements.txt")
  assert p["optional-dependencies"]["test"] == pins("requirements-test.txt")
  jax_version = next(r for r in pins("requirements.txt") if r.startswith("jax==")).split("==")[1]
  assert p["optional-dependencies"]["tpu"] == [f"jax[tpu]=={jax_version}"]
  assert p["optional-dependencies"]["cuda"] == [f"jax[cuda12]=={jax_version}"]
  assert p["scripts"] == {"ldm-jax": "ldm_jax.main:console_main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel `pip wheel` builds from a copy of the sources (no build/ or egg-info in the checkout)."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  shutil.copytree(os.path.join(ROOT, "ldm_jax"), src / "ldm_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
                        str(src)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  (path,) = (tmp / "dist").glob("ldm_jax-*.whl")
  return zipfile.ZipFile(path)


def test_wheel_holds_the_package_and_its_data(wheel):
  names = set(wheel.namelist())
  py_files, data_files = tracked_package_files()
  assert data_files  # the embedded MNIST and tokenizer files, their READMEs, checksums and licence
  assert [f for f in data_files if f not in names] == []
  assert [f for f in py_files if f not in names] == []
  import ldm_jax  # pylint: disable=import-outside-toplevel
  assert {n.split("/")[0] for n in names} == {"ldm_jax", f"ldm_jax-{ldm_jax.__version__}.dist-info"}


def test_wheel_declares_console_script_and_pins(wheel):
  (dist_info,) = {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n}
  entry_points = configparser.ConfigParser()
  entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
  assert dict(entry_points["console_scripts"]) == {"ldm-jax": "ldm_jax.main:console_main"}
  metadata = wheel.read(f"{dist_info}/METADATA").decode().splitlines()
  requires = [line.split(": ", 1)[1] for line in metadata if line.startswith("Requires-Dist: ")]
  assert [r for r in requires if "extra ==" not in r] == pins("requirements.txt")


def test_console_script_is_python_m_ldm_jax_main():
  """`ldm-jax` (installed by `pip install -e .`) reads configs that import experiments.configs, as
  `python -m ldm_jax.main` does from the repository root."""
  script = os.path.join(os.path.dirname(sys.executable), "ldm-jax")
  args = ["train", "--config=experiments/configs/paper_ldm.py:celebahq_ldm_vq4", "--print_config"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda cmd: subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  script_out, module_out = run([script]), run([sys.executable, "-m", "ldm_jax.main"])
  assert script_out.returncode == module_out.returncode == 0, script_out.stderr[-2000:]
  assert script_out.stdout == module_out.stdout and "preset: LDM_CELEBAHQ" in script_out.stdout
