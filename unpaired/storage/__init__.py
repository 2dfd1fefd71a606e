"""What a run leaves behind, and the one owner of each of its files: the run folder, its records and
their formats, the lease that keeps one process per run, and the checked, atomic file helpers."""
