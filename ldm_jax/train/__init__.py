"""Model-independent training infrastructure: state, optimizer, EMA, parallelism, checkpoints."""
