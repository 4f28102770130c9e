"""Bare servers with no registry logic: the framework's own ceiling for each figure."""
