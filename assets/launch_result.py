"""What a launch did (assets/launch.py returns it): one Outcome per asset partition considered, and
the counts, the lines the CLI prints at the end, and the files left out as still being written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.training.settle import TRUNCATED, Left


@dataclass
class Outcome:
    asset: str
    partition: str | None
    status: str  # materialized | up_to_date | failed
    reason: str = ""
    dagster_run_id: str | None = None


@dataclass
class LaunchSummary:
    dagster_home: Path
    outcomes: list[Outcome] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # checkpoint partition keys considered
    runs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    base_loads: int = 0  # base pipelines loaded in this process during the launch
    renders: int = 0  # images actually rendered (not reused from the render cache)
    left: list[Left] = field(default_factory=list)  # checkpoint files not evaluated: still being written
    pickup_seconds: int = 0  # the sensor counts a file that stopped changing within this long
    reaped: list[str] = field(default_factory=list)  # lost runs closed by this launch (already said)
    # For assets/launch_stamp.py: what the launch acted on (taken before it acted) and its own Dagster runs.
    facts: dict = field(default_factory=dict, repr=False)
    own_runs: set[str] = field(default_factory=set, repr=False)
    own_token: str | None = field(default=None, repr=False)  # tags the source observations it reported

    def _of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[Outcome]:
        return self._of("failed")

    @property
    def materialized(self) -> list[Outcome]:
        return self._of("materialized")

    @property
    def up_to_date(self) -> list[Outcome]:
        return self._of("up_to_date")

    def lines(self) -> list[str]:
        writing = sum(lf.why != TRUNCATED for lf in self.left)
        left = f", {writing} left as possibly still being written" if writing else ""
        left += f", {len(self.left) - writing} truncated" if len(self.left) > writing else ""
        out = [f"{len(self.runs)} run(s), {len(self.checkpoints)} checkpoint(s){left}: {len(self.materialized)} "
               f"materialized, {len(self.up_to_date)} up to date, {len(self.failed)} failed; {self.renders} "
               f"render(s), {self.base_loads} base load(s), {self.seconds:.1f}s (instance {self.dagster_home})"]
        out += [f"FAILED {o.asset}[{o.partition}]: {o.reason}" for o in self.failed]
        out += [f"LEFT {lf.line()}; {self._when(lf)}" for lf in self.left]
        return out

    def _when(self, lf: Left) -> str:
        if lf.why == TRUNCATED:
            return "it will not count as it is (the run's findings report it as RUNTIME.LORA_INVALID)"
        return (f"re-run `lora-pipeline evaluate` once it stops changing; the sensor picks it up within "
                f"{self.pickup_seconds} s of its last change")
