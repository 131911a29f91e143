"""One module per CLI command: `add_arguments(parser)` and `run(args) -> exit code`.

Command modules import heavy libraries (torch, diffusers, dagster) inside `run`, so that
`lora-pipeline --help` stays fast and light.
"""
