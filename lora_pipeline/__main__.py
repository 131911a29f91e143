"""`python -m lora_pipeline`: the same CLI as the `lora-pipeline` command."""

from lora_pipeline.cli import main

raise SystemExit(main())
