"""Progress display for long work (the CLI's side; library code only logs)."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


class TrainProgress:
    """A tqdm bar over iterations showing step, reward and the latest held-out accuracy."""

    def __init__(self, total: int, initial: int, desc: str, position: int | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            position=position,
        )
        self.accuracy: float | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        if "eval/accuracy" in row:
            self.accuracy = row["eval/accuracy"]
        if row["step"] > 0:
            self.bar.update(row["step"] - self.bar.n)
        self.bar.set_postfix(
            reward=fmt(row.get("reward/mean"), ".2f"),
            acc=fmt(self.accuracy),
            rollouts=row.get("rollouts", 0),
        )
        if row.get("reincarnated"):
            self.bar.write(f"step {row['step']}: policy reincarnation (reference <- policy)")

    def close(self) -> None:
        self.bar.close()
