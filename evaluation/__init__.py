"""Evaluation: everything that measures simulators and policies.

The layer above the envs and agents: the episode runner and interval helper every report
shares, the benchmark, the fidelity report, the model card, and the speed and soak
measurements.
"""
