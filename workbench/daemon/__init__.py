"""The supervisor, its executors and job wrapper, and the link clients use to reach it."""
