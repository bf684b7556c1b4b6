"""The only place that wires Ray for a run: preparation before anything starts, the run's
lifetime, the head's supervision loop, the topology and cluster sizing, secrets from env vars."""
