"""Measurements behind `llm-usersim speed` and `llm-usersim soak` (throughput, FLOP/s, memory).

Each measurement is a plain function returning figures; the CLI modules parse flags, print tables
and write JSON. Nothing here is imported by the envs.
"""
