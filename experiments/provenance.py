"""The code a result was made with: the checkout's short commit, "+dirty" when tracked files
differ from it (untracked files and the results under experiments/results/, which the runs
themselves rewrite, do not count), "unknown" outside a git checkout."""

import os
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = "experiments/results"  # a run's own outputs: rewriting them does not change the code


def git_commit() -> str:
  """e.g. "b1a91d2" or "b1a91d2+dirty"; "unknown" when git or the checkout is missing."""
  try:
    run = lambda *cmd: subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                                      check=True, timeout=30).stdout.strip()
    head = run("rev-parse", "--short", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".",
                f":(exclude){RESULTS}")
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (head or "unknown") + ("+dirty" if head and dirty else "")
