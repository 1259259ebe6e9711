"""Training and evaluation: process groups, optimizer and schedule, checkpoints, loops."""
