"""What a run leaves on disk: the run directory and its snapshots, the pick of the best snapshot,
and summary.json."""
