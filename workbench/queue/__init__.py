"""The job model: states and transitions, resources, requests, kinds, the scheduler, pipelines."""
