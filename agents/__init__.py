"""Slate recommendation agents with stable-baselines3's `predict` interface."""
