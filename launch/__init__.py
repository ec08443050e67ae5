"""Launchers for multi-host runs: Cloud TPU pod slices, SLURM GPU clusters, N local processes.

Each script is self-contained (stdlib only) so it also runs as `python launch/<name>.py`.
"""
