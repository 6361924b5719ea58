"""The job model every layer shares: states, the transition table, resources."""
