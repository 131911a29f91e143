"""Training runs: discovery, format parsers, the normalised run record, checkpoint analysis."""
