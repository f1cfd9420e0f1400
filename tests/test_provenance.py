"""experiments/provenance.py: the short commit, "+dirty" for changed tracked files only (not the
results under experiments/results/), "unknown" outside a checkout; checked on a throwaway git
repository."""

import re
import subprocess

from experiments import provenance


def _git(repo, *args):
  subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                 check=True, capture_output=True)


def _head(repo):
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                        capture_output=True, text=True).stdout.strip()


def test_commit_dirty_and_unknown(tmp_path, monkeypatch):
  monkeypatch.setattr(provenance, "ROOT", str(tmp_path))
  assert provenance.git_commit() == "unknown"  # not a checkout
  _git(tmp_path, "init", "-q")
  (tmp_path / "a.txt").write_text("1")
  _git(tmp_path, "add", "a.txt")
  _git(tmp_path, "commit", "-q", "-m", "one")
  head = _head(tmp_path)
  assert provenance.git_commit() == head
  (tmp_path / "new.txt").write_text("untracked files do not count")
  assert provenance.git_commit() == head
  results = tmp_path / "experiments" / "results"
  results.mkdir(parents=True)
  (results / "r.md").write_text("a report")
  _git(tmp_path, "add", "experiments")
  _git(tmp_path, "commit", "-q", "-m", "two")
  head = _head(tmp_path)
  (results / "r.md").write_text("the report rewritten by its rerun")
  assert provenance.git_commit() == head  # a run's own outputs are not code
  (tmp_path / "a.txt").write_text("2")
  assert provenance.git_commit() == head + "+dirty"


def test_this_checkout():
  assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", provenance.git_commit())
