"""Runs of many stmed commands declared in one YAML file: ``stmed compare`` (preference variants
side by side) and ``stmed reproduce`` (the paper's table on its released model)."""
