"""Probe data: image folders with labels, concept tables and masks; synthetic worlds; training."""
