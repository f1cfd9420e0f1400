"""A tiny training run in its own process, for the resume / preemption / multi-host tests.

python -m tests.train.train_run_script --workdir=W [--mode=mesh] [--num_steps=N] ...
Writes W/metrics.jsonl (every step) and, when it finishes, W/final_<process>.npz (params). Run from
the repository root (the tests start it there).
"""

import argparse
import os


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--mode", default="mesh")
  p.add_argument("--devices", type=int, default=2)
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--num_steps", type=int, default=20)
  p.add_argument("--save_every", type=int, default=4)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--delay", type=float, default=0.0)
  p.add_argument("--noise", type=float, default=0.1)
  p.add_argument("--coordinator", default="")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  a = p.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"

  import jax
  import numpy as np
  from ldm_jax.train import checkpoint, distributed, loop, metrics
  from tests.train import train_tiny

  if a.num_processes > 1:
    cfg = distributed.default_config()
    cfg.coordinator_address, cfg.num_processes, cfg.process_id = (
        a.coordinator, a.num_processes, a.process_id)
    cfg.initialization_timeout = 60
    distributed.initialize(cfg)

  ocfg = train_tiny.optimizer_config()
  dp = train_tiny.data_parallel(a.mode, a.fsdp, noise=a.noise)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  data = train_tiny.ArrayBatches(a.batch_size, shard=jax.process_index(),
                                 num_shards=jax.process_count(), delay=a.delay)
  ckpts = checkpoint.Checkpoints(os.path.join(a.workdir, "ckpt"), max_to_keep=3)
  writer = metrics.MetricWriter(a.workdir, tensorboard=False)
  result = loop.fit(dp, state, data, num_steps=a.num_steps, checkpoints=ckpts,
                    save_every=a.save_every, metadata={"latent_scale_factor": 0.5},
                    config=ocfg, writer=writer, log_every=1, progress=False)
  writer.close()
  ckpts.close()
  params = jax.tree.map(checkpoint.host_value, dp.to_global(result.state).params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(a.workdir, f"final_{jax.process_index()}.npz"), **flat)
  print("DONE", result.step, result.restored_from, flush=True)


if __name__ == "__main__":
  main()
