"""Prompt-pair sets (ioi, induction, greater_than, custom) and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    """One built-in task: its name, what it is, its corruptions (the first is the default) and
    (via ``example()``) one pair to show."""

    name: str
    description: str
    corruptions: tuple[str, ...]
    example_of: str | dict[str, str] = field(default="", repr=False)  # a pair or "module:NAME"

    @property
    def default_corruption(self) -> str:
        return self.corruptions[0]

    def example(self) -> dict:
        if isinstance(self.example_of, dict):
            return dict(self.example_of)
        import importlib

        module, _, name = self.example_of.partition(":")
        return dict(getattr(importlib.import_module(f"{__name__}.{module}"), name))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "corruptions": list(self.corruptions),
            "example": self.example(),
        }


_PLANTED_EXAMPLE = {
    "clean": "<bos> t24 t31 t28 t13 t01 t08 t16 t15 t24 t31 t28 t13 t01 t08 t16",
    "corrupted": "<bos> t12 t09 t30 t11 t18 t06 t25 t04 t24 t31 t28 t13 t01 t08 t16",
    "answer": " t15",
    "wrong": " t04",
}

#: The one registry of built-in tasks: the engine (``PromptPairs.from_task``), the API's
#: validation and ``GET /api/tasks``, the CLI and the dashboard (which reads the API) use it.
TASK_REGISTRY: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "ioi",
            "Indirect object identification: 'When Mary and John went to the "
            "store , John gave a drink to' -> ' Mary'",
            ("abc", "swap"),
            "ioi:IOI_EXAMPLE",
        ),
        TaskSpec(
            "induction",
            "Induction: a random token sequence repeated; predict the next "
            "repeated token. Corruption: the first half replaced by random tokens.",
            ("random",),
            "induction:INDUCTION_EXAMPLE",
        ),
        TaskSpec(
            "greater_than",
            "Greater-than: 'The war lasted from the year 1732 to the year 17' -> "
            "a later year (' 45' above ' 19'). Corruption '01': the start year becomes 1701.",
            ("01",),
            "greater_than:GT_EXAMPLE",
        ),
        TaskSpec(
            "planted",
            "Induction with a BOS token for the planted model (pa.load_model("
            "'planted')), whose circuit is known by construction: [bos] r r[:-1] -> r[-1]; "
            "corruption: the first half replaced by random tokens.",
            ("random",),
            _PLANTED_EXAMPLE,
        ),
    )
}

#: The task names, in the registry's order.
TASKS: tuple[str, ...] = tuple(TASK_REGISTRY)


def task_names_text(conj: str = "or") -> str:
    """ "'ioi', 'induction', 'greater_than' or 'planted'" (for messages and help)."""
    names = [repr(n) for n in TASKS]
    return ", ".join(names[:-1]) + f" {conj} {names[-1]}"


def list_tasks() -> list[dict]:
    """Built-in tasks with an example pair each (for the UI and the API)."""
    return [t.to_dict() for t in TASK_REGISTRY.values()]
