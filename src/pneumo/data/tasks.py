"""Tasks: the one place that maps records to class indices and class names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pneumo.data.records import Record


@dataclass(frozen=True)
class Task:
    """A classification task over records; ``target`` returns None for records outside the task."""

    name: str
    class_names: tuple[str, ...]
    _key: Callable[[Record], str | None]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    def target(self, record: Record) -> int | None:
        key = self._key(record)
        return self.class_names.index(key) if key in self.class_names else None

    def select(self, records: Sequence[Record]) -> tuple[list[Record], list[int]]:
        """The records that belong to the task and their class indices."""
        chosen = [(r, t) for r in records if (t := self.target(r)) is not None]
        return [r for r, _ in chosen], [t for _, t in chosen]

    def out_of_task(self, records: Sequence[Record]) -> list[Record]:
        """Records outside the task (e.g. NORMAL images for bacteria-virus): material for the dummy class.

        A PNEUMONIA image without a subtype is not outside bacteria-virus, only unlabelled for it: it is left out
        of the task and of the dummy class alike."""
        return [r for r in records if self.target(r) is None and r.subtype is not None]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("normal-pneumonia", ("NORMAL", "PNEUMONIA"), lambda r: r.label, "normal vs pneumonia"),
        Task(
            "bacteria-virus",
            ("bacteria", "virus"),
            lambda r: r.subtype if r.label == "PNEUMONIA" else None,
            "bacterial vs viral pneumonia (pneumonia images only)",
        ),
        Task("normal-bacteria-virus", ("normal", "bacteria", "virus"), lambda r: r.subtype, "three classes"),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
