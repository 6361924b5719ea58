"""Job kinds (command, ingest, train, test, export), each run as its own process."""
