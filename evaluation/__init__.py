"""Evaluation: everything that measures simulators and policies (the layer above the envs and
agents): the episode runner and interval helper every report shares, the benchmark, the
fidelity report, the model card, and the speed and soak measurements."""
