"""Smoke tests of experiments/benchmarks: train_throughput --quick prints the full table (torch eager
and torch.compile peers), its torch stage peer runs, pod_compile and accelerator --cpu_smoke."""

import os
import re
import subprocess
import sys
import tempfile

import pytest

from ldm_jax.host_devices import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("model", "implementation", "batch", "params (M)", "compile (s)", "step (ms, median)",
           "images/s", "model GFLOP/step", "GFLOP/s", "MFU (%)", "JAX/torch eager (2 threads)",
           "JAX/torch.compile (2 threads)", "JAX/best torch")
# One inductor cache for every run of this test: the first run compiles the tiny UNet's ~30 C++
# kernels with gcc (30-130 s on 2 cores), later runs reuse them (the benchmark itself compiles cold).
INDUCTOR_CACHE = os.path.join(tempfile.gettempdir(), "ldm_jax_test_benchmarks_inductor")


def _table_rows(text):
  """Rows of the markdown tables in `text`, as lists of stripped cells (header/rule lines dropped)."""
  rows = []
  for line in text.splitlines():
    if line.startswith("| ") and not line.startswith("|---"):
      rows.append([c.strip() for c in line.strip().strip("|").split("|")])
  return rows


def test_quick_run_prints_expected_rows():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TORCHINDUCTOR_CACHE_DIR=INDUCTOR_CACHE,
             XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}")  # the script's own layout
  # --quick: a tiny 1-level UNet on 4x4x4 latents, batch 4, 64x64 peak matmuls, torch 2 threads,
  # eager and torch.compile.
  cmd = [sys.executable, "-m", "experiments.benchmarks.train_throughput", "--quick"]
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  # The final summary (after the blank line before the load average) holds both tables once.
  summary = out.stdout[out.stdout.index("load average"):]
  assert re.search(r"load average \(1/5/15 min\) [\d.]+/[\d.]+/[\d.]+", summary)
  assert "torch.compile 'default';" in out.stdout  # the line before the load average
  rows = _table_rows(summary)

  peaks = {r[0]: float(r[1]) for r in rows if len(r) == 2 and r[0] != "matmul peak"}
  assert sorted(peaks) == sorted([
      "jnp.dot 64^2 f32, jit, 1 device", "jnp.dot 64^2 f32, pmap, 2 devices",
      "torch.matmul 64^2 f32, 2 threads"])
  assert all(g > 0 for g in peaks.values())

  assert tuple(rows[len(peaks) + 1]) == COLUMNS  # the throughput table's header
  body = [r for r in rows if len(r) == len(COLUMNS) and r[0] != "model"]
  # JAX rows name the convolution back end the CLI's "auto" gives this (narrow) UNet.
  assert [r[1] for r in body] == ["jax jit, 1 device (ynnpack)", "jax pmap, 2 devices (ynnpack)",
                                  "torch eager, 2 threads", "torch.compile, 2 threads"]
  for r in body:
    assert r[0] == "larger 4x4x4" and r[2] == "4"
    images_per_s, mfu = float(r[6]), float(r[9])
    assert images_per_s > 0 and 0 < mfu < 100
    assert abs(images_per_s - 4e3 / float(r[5])) <= 0.01 * images_per_s  # images/s = B / step
  assert float(body[3][4]) > 0  # torch.compile's first call traces and compiles
  # The ratio columns are filled for the JAX rows only: images/s over torch eager's and
  # torch.compile's at the first thread count (2), and over the fastest torch row.
  eager_ips, compiled_ips = float(body[2][6]), float(body[3][6])
  for r in body[:2]:
    for col, peer in ((10, eager_ips), (11, compiled_ips), (12, max(eager_ips, compiled_ips))):
      assert abs(float(r[col]) - float(r[6]) / peer) <= 0.02 * float(r[col]) + 0.01
  assert all(r[10] == r[11] == r[12] == "" for r in body[2:])
  assert ("Targets (issue 14): train step >= 1.2x torch eager (2 threads) on both UNets and ahead "
          "of torch.compile (> 1x)") in summary
  assert re.search(r"larger 4x4x4, UNet step: fastest JAX row \"jax (jit|pmap)[^\"]*\": [\d.]+x torch eager "
                   r"\(2 threads\) \(target >= 1\.2x: (met|missed[^)]*)\); [\d.]+x torch\.compile "
                   r"\(2 threads\) \(target > 1x: (met|missed[^)]*)\)", summary)


def test_torch_stage_peer_runs_the_flax_networks():
  """The torch peer of the full LDM stage step (train_throughput's stage rows; not in --quick):
  two eager steps on the MNIST configs give finite losses, with exactly the Flax UNet's and KL
  autoencoder's parameter counts."""
  pytest.importorskip("diffusers")
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import torch_peers  # pylint: disable=import-outside-toplevel
  from experiments.configs import mnist_autoencoder, mnist_ldm  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert import diffusers_unet, diffusers_vae  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  ldm, ae_cfg = mnist_ldm.get_config(), mnist_autoencoder.get_config()
  unet = builders.unet(ldm.model, in_channels=ae_cfg.model.z_channels, num_class_embeds=11)
  ae = builders.autoencoder(ae_cfg.model)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), np.uint8)
  torch.set_num_threads(1)  # two tiny steps: threads only contend with the rest of the machine
  call, n_params = torch_peers.stage_step(
      diffusers_unet.unet_config_from_module(unet), diffusers_vae.vae_config_from_module(ae), images,
      np.array([3, 7], np.int32), np.linspace(0.999, 0.01, 1000), np.array([0.0, 1e-4, 2e-4]),
      num_classes=10, p_uncond=0.5, scale_factor=1.0, optim=ldm.optim, ema_decay=0.999)
  losses = [call(), call()]
  assert all(np.isfinite(losses)) and all(l > 0 for l in losses)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  n_unet = count(jax.eval_shape(unet.init, jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32),
                                np.zeros((1,), np.float32), y=np.zeros((1,), np.int32))["params"])
  assert n_params == n_unet + count(diffusers_vae.abstract_params(ae))


def test_sampling_quick_run_prints_ratios_and_target():
  """sampling_throughput --quick (the MNIST UNet, batch 2, 2 steps per sampler) without the
  torch.compile columns (a cold inductor compile of the MNIST UNet takes 1-2 min here): both
  samplers, the JAX/torch ratio columns and the >= 1.5x target line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}")
  cmd = [sys.executable, "-m", "experiments.benchmarks.sampling_throughput", "--quick", "--skip_torch_compile"]
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = _table_rows(out.stdout)
  assert rows[0] == ["model", "UNet params", "batch", "sampler", "JAX first call s", "JAX steady s",
                     "JAX samples/s", "diffusers s", "diffusers samples/s", "torch.compile first call s",
                     "torch.compile s", "torch.compile samples/s", "JAX/torch eager", "JAX/torch.compile"]
  assert [(r[0], r[2], r[3]) for r in rows[1:]] == [("mnist", "2", "ddim-2"), ("mnist", "2", "dpmpp_2m-2")]
  for r in rows[1:]:
    jax_ips, torch_ips = float(r[6]), float(r[8])
    assert jax_ips > 0 and torch_ips > 0 and r[9:12] == ["nan"] * 3 and r[13] == "nan"
    assert abs(float(r[12]) - jax_ips / torch_ips) <= 0.02 * float(r[12]) + 0.01
  assert "Target (issue 14): sampling >= 1.5x torch" in out.stdout
  assert "mnist: JAX convolutions ynnpack" in out.stdout  # the pipeline's choice for a narrow UNet
  assert re.search(r"Load average \(1/5/15 min\): [\d.]+/[\d.]+/[\d.]+ at start, [\d.]+/[\d.]+/[\d.]+ at end",
                   out.stdout)
  assert re.search(r"mnist ddim-2, batch 2: [\d.]+x torch eager \((met|missed[^)]*)\)\n", out.stdout)


def test_pod_compile_reports_sharded_memory_and_collectives(tmp_path):
  """experiments/benchmarks/pod_compile.py on the tiny test LDM: 4 and 8 simulated devices, fsdp 2."""
  out_json = tmp_path / "pod.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = FAST_COMPILE_FLAGS  # the script sets its own device count
  tiny = os.path.join(ROOT, "tests", "configs", "tiny.py")
  cmd = [sys.executable, "-m", "experiments.benchmarks.pod_compile",
         f"--models={tiny}:latent_diffusion", f"--first_stage={tiny}:autoencoder",
         "--devices=4,8", "--fsdp=2",
         "--batch_per_device=1,2", "--remat=none", "--dtype=float32", f"--out={out_json}"]
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  import json  # pylint: disable=import-outside-toplevel
  rows = json.loads(out_json.read_text())["rows"]
  assert [(r["devices"], r["batch_per_device"]) for r in rows] == [(4, 1), (4, 2), (8, 1)]
  for r in rows:
    # The state (params, EMA, Adam mu and nu: 16 bytes per parameter) is sharded over fsdp = 2.
    state = 16 * r["params"] / 2 / 2**30
    assert 0.8 * state <= r["argument_gib"] <= 1.6 * state + 0.01, r
    assert r["collectives"]["all-reduce"] + r["collectives"]["all-gather"] > 0  # gradients / fsdp
  assert rows[1]["temp_gib"] > rows[0]["temp_gib"]  # twice the per-device batch, more activations
  assert "Largest per-device batch within 90% of HBM" in out.stdout and "tiny.py:latent_diffusion | 4 |" in out.stdout
  # --estimate (lowering only): the same state and batch shards, exactly, and a peak near the compiled one.
  est_json = tmp_path / "estimate.json"
  cmd = [c for c in cmd if not c.startswith(("--out=", "--devices="))] + ["--devices=4", "--estimate",
                                                                         f"--out={est_json}"]
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  est = json.loads(est_json.read_text())["rows"]
  assert [(r["devices"], r["batch_per_device"], r["method"]) for r in est] == [(4, 1, "estimate"), (4, 2, "estimate")]
  for e, c in zip(est, rows[:2]):
    assert abs(e["argument_gib"] - c["argument_gib"]) <= 1e-3 * c["argument_gib"], (e, c)
    assert 0.5 * c["peak_gib"] <= e["peak_gib"] <= 2.0 * c["peak_gib"], (e, c)
    assert e["activation_gib"] > 0
  assert est[1]["activation_gib"] > est[0]["activation_gib"]  # activations grow with the batch


def test_accelerator_cpu_smoke_prints_labelled_table():
  """experiments/benchmarks/accelerator.py --cpu_smoke: every planned row ran, labelled as a CPU smoke run."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.accelerator", "--cpu_smoke"],
                       env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = out.stdout[out.stdout.index("UNet params:"):]
  rows = [r for r in _table_rows(summary) if r[0] != "device"]
  # train at batch 2 without remat, sampling at batch 1, then train with remat "full".
  assert [(r[1], r[2], r[4]) for r in rows] == [("train step", "2", "none"), ("DDIM guided", "1", "none"),
                                                ("train step", "2", "full")]
  for r in rows:
    assert r[0] == "cpu smoke" and r[8] == "n/a"  # never an accelerator label or an MFU on the CPU
    ms, images_per_s = float(r[6]), float(r[7])
    assert ms > 0 and abs(images_per_s - float(r[2]) * 1e3 / ms) <= 0.02 * images_per_s
    assert float(r[9]) > 0  # the compiled program's memory footprint
  # Remat recomputes activations instead of keeping them: no larger footprint than without.
  assert float(rows[2][9]) <= float(rows[0][9]) * 1.05
  assert "MLPerf Training v4.0" in out.stdout and "~131 images/s per GPU" in out.stdout
  assert "not run" not in out.stdout


def test_op_profile_quick_classifies_the_step():
  """op_profile --quick on the tiny UNet: every class row, each side's classes sum to its total,
  and the JAX HLO classifier finds all three convolution kinds, the optimizer and GroupNorm."""
  from experiments.benchmarks import op_profile  # pylint: disable=import-outside-toplevel
  jax_ms, torch_ms = op_profile.main(["--quick"])
  for c in ("convolution forward", "convolution input gradient", "convolution weight gradient",
            "optimizer (AdamW)", "GroupNorm (fwd + bwd, with a fused SiLU)"):
    assert jax_ms[c] > 0, (c, dict(jax_ms))
  assert torch_ms["convolution forward"] > 0 and torch_ms[op_profile.CONV_BACKWARD] > 0
  assert torch_ms["optimizer (AdamW)"] > 0 and torch_ms["GroupNorm (fwd + bwd, with a fused SiLU)"] > 0
  assert set(jax_ms) <= set(op_profile.CLASSES) and set(torch_ms) <= set(op_profile.CLASSES) | {
      op_profile.CONV_BACKWARD}
  rows = _table_rows(op_profile.table(jax_ms, torch_ms, 10.0, 10.0))
  assert [r[0] for r in rows[1:len(op_profile.CLASSES) + 1]] == list(op_profile.CLASSES)
  total = next(r for r in rows if r[0] == "sum of the op classes")
  assert abs(float(total[1]) - sum(jax_ms.values())) < 0.1
  assert abs(float(total[2]) - sum(torch_ms.values())) < 0.1


def test_nested_grads_times_every_op_in_every_placement(capsys):
  """nested_grads at batch 1: each op timed at top level, in cond and in scan (their results equal
  the top level's, checked inside `measure`), and the printed table has one row per op."""
  from experiments.benchmarks import nested_grads  # pylint: disable=import-outside-toplevel
  results = nested_grads.main(["--batch=1", "--repeats=1"])
  assert list(results) == list(nested_grads.ops(1))
  assert all(set(r) == {"top", "cond", "scan"} and min(r.values()) > 0 for r in results.values())
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[1].split()[:4] == ["op", "top", "ms", "cond"] and len(lines) == 2 + len(results)
  with pytest.raises(SystemExit, match="--batch=0"):
    nested_grads.main(["--batch=0"])
