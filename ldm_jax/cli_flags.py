"""Flag parsing of the command line: a misspelt config key is one line naming it, with the closest
valid key, instead of ml_collections' AttributeError.

  app.run(main, flags_parser=cli_flags.parse)
"""

import difflib
import sys

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags


def _config_file(argv):
  """The value of --config in argv (`--config=F` or `--config F`), else None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load(path):
  """The config a --config flag value names (file[:variant]), with no overrides applied."""
  values = flags.FlagValues()
  argv = ["ldm_jax.main", f"--config={path}"]  # (overrides are read from sys_argv: none here)
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def unknown_key(config, key):
  """(the unknown prefix of the dotted `key`, the closest valid key or None, the valid keys at
  that level) where `key` leaves `config`; None when every part of it exists."""
  node, done = config, []
  for part in key.split("."):
    if not isinstance(node, config_dict.ConfigDict):
      return None  # a value below a leaf: not a key error
    if part not in node:
      keys = sorted(node.keys())
      close = difflib.get_close_matches(part, keys, n=1)
      prefix = ".".join(done + [""])
      return prefix + part, (prefix + close[0]) if close else None, [prefix + k for k in keys]
    node, done = node[part], done + [part]
  return None


def unknown_key_message(argv, err):
  """One line naming the first override of argv whose key the config lacks (and the closest
  valid key); `err`'s own text where the config cannot be read again."""
  path = _config_file(argv)
  try:
    config = _load(path) if path else None
  except Exception:  # pylint: disable=broad-except  (the original error is the better report)
    config = None
  for arg in argv:
    if config is None or not arg.startswith("--config."):
      continue
    found = unknown_key(config, arg[len("--config."):].split("=", 1)[0])
    if found:
      bad, close, keys = found
      hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(keys)}."
      return f"unknown config key {bad!r} (in {arg}); {hint} --print_config lists every key."
  return f"bad config override: {' '.join(str(err).split())}"


def parse(argv):
  """absl's flag parsing (app.run's default), but a config key the config does not have ends the
  run with one line on stderr and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as err:  # what ml_collections raises for an unknown key
    sys.stderr.write(f"ldm_jax.main: error: {unknown_key_message(argv, err)}\n")
    sys.exit(2)
  except flags.Error as err:  # absl's usual report (a bad value, an unknown flag)
    sys.stderr.write(f"FATAL Flags parsing error: {err}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)

