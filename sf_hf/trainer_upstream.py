"""The transformers and TRL methods a Schedule-Free trainer overrides, checked against its parent when the class is
created: an upstream rename or signature change fails loudly instead of silently skipping sf_hf's code (an override
of a method that no longer exists is never called, and checkpoints would hold y again).

    check_overrides(ScheduleFreeSFTTrainer, (ScheduleFreeMixin, HubPublishing))   # raises UpstreamChangedError

`ScheduleFreeMixin.__init_subclass__` runs it for every Schedule-Free trainer class: a mismatch warns there
(`UpstreamChangedWarning`: `import sf_hf` still works, for its optimizers) and raises when the trainer is built.

The overrides are derived from the mixins themselves: every method of their class bodies that `transformers.Trainer`
also has, plus `WRAPPED_PRIVATE_METHODS` (a private method that upstream renames would no longer be on `Trainer`, so
those are named; tests/test_trainer_upstream.py holds the list equal to the mixins' private overrides). Each must
exist on the parent (the class after the mixins in the MRO: `Trainer`, TRL's `SFTTrainer`, a user's subclass), and
the two signatures must fit both ways: whatever the parent's callers pass reaches the override, and every parameter
the override passes on reaches the parent's (`ADAPTS_TO_PARENT`: those that pass on only what the parent's takes).
"""

import inspect
from importlib.metadata import PackageNotFoundError, version

from transformers import Trainer

TESTED_VERSIONS = {"transformers": "5.18 to 5.25", "trl": "1.16"}
"""The releases sf_hf's trainers are tested with (CI: the floor setup.cfg allows and the newest); the one source for
error messages and docs."""

WRAPPED_PRIVATE_METHODS = (
    "_finalize_training",
    "_get_grad_norm",
    "_init_training_state",
    "_issue_warnings_after_load",
    "_load_best_model",
    "_load_from_checkpoint",
    "_load_optimizer_and_scheduler",
    "_prepare_for_training",
    "_push_from_checkpoint",
    "_save_checkpoint",
)
"""The private `transformers.Trainer` methods the mixins override, each wrapping the parent's (super())."""


ADAPTS_TO_PARENT = ("create_model_card",)
"""Overrides that pass on only the parameters the parent's method takes (`HubPublishing.create_model_card`: TRL's card
takes `model_name`, `dataset_name`, `tags`; transformers' its own): checked for what reaches them only."""


class UpstreamChangedError(TypeError):
    """A method a Schedule-Free mixin overrides is missing from the parent trainer, or takes other parameters: the
    installed transformers or TRL renamed or changed it. Raised when such a trainer is built."""


class UpstreamChangedWarning(UserWarning):
    """The same, warned when the trainer class is created (`import sf_hf` creates `ScheduleFreeTrainer`)."""


def overridden_methods(mixins: tuple[type, ...]) -> dict[str, list]:
    """{name: [the mixins' definitions, first in the MRO first]} of every upstream method the mixins override."""
    found = {}
    for mixin in mixins:
        for name, value in vars(mixin).items():
            if name.startswith("__") or not callable(value):
                continue
            if hasattr(Trainer, name) or name in WRAPPED_PRIVATE_METHODS:
                found.setdefault(name, []).append(value)
    return found


def check_overrides(cls: type, mixins: tuple[type, ...]) -> None:
    """Raises `UpstreamChangedError` when a method that `mixins` override is missing from `cls`'s parent (the class
    after the last mixin in `cls.__mro__`) or has a signature that does not fit the override's."""
    mro = cls.__mro__
    parent = mro[max(mro.index(m) for m in mixins) + 1]
    for name, definitions in sorted(overridden_methods(mixins).items()):
        upstream = inspect.getattr_static(parent, name, None)
        if upstream is None or not callable(getattr(parent, name)):
            _fail(cls, parent, name, "which it no longer has (renamed or removed upstream)")
        theirs = _parameters(_first_with_named_parameters(parent, name))
        for ours in definitions:
            problem = _signature_mismatch(_parameters(ours), theirs, adapts=name in ADAPTS_TO_PARENT)
            if problem:
                _fail(cls, parent, name, f"whose parameters changed: {problem}")


def _first_with_named_parameters(parent: type, name: str):
    """The parent's method `name`, past pass-throughs `(*args, **kwargs)` (TRL's `training_step`): the first
    definition in the MRO from `parent` on that names its parameters."""
    definitions = [vars(k)[name] for k in parent.__mro__ if name in vars(k)]
    for method in definitions:
        if any(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in _parameters(method)):
            return method
    return definitions[0]


def _parameters(method) -> list[inspect.Parameter]:
    """The method's parameters as its callers pass them (without `self` / `cls`)."""
    function = method.__func__ if isinstance(method, (staticmethod, classmethod)) else method
    parameters = list(inspect.signature(function).parameters.values())
    return parameters if isinstance(method, staticmethod) else parameters[1:]


def _signature_mismatch(ours: list, theirs: list, adapts: bool = False) -> str:
    """What keeps the override (`ours`) and the parent's method (`theirs`) from being called alike, or "": every
    parameter of the parent's reaches the override, and every parameter of the override reaches the parent's (it
    passes them on), unless it `adapts` to the parent's signature. A required positional parameter must have the same
    name at the same position; one with a default (passed by name) the same name anywhere, or land in `**kwargs`."""
    for receiver, sender in [(ours, theirs)] + ([] if adapts else [(theirs, ours)]):
        kinds = {p.kind for p in receiver}
        receiver_positional = [p.name for p in receiver if p.kind in _POSITIONAL]
        for index, p in enumerate(sender):
            required = p.default is inspect.Parameter.empty
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                if receiver is ours and p.kind not in kinds:
                    star = "*" if p.kind == inspect.Parameter.VAR_POSITIONAL else "**"
                    return _which(True, f"{star}{p.name}", receiver_positional)
            elif required and p.kind in _POSITIONAL:
                if index < len(receiver_positional):
                    if receiver_positional[index] != p.name:
                        return _which(receiver is ours, f"{p.name!r} at position {index + 1}", receiver_positional)
                elif inspect.Parameter.VAR_POSITIONAL not in kinds:
                    return _which(receiver is ours, f"{p.name!r}", receiver_positional)
            elif p.name not in {q.name for q in receiver} and inspect.Parameter.VAR_KEYWORD not in kinds:
                return _which(receiver is ours, f"{p.name!r}", [q.name for q in receiver])
    return ""


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _which(receiver_is_override: bool, what: str, receiver_names: list) -> str:
    if receiver_is_override:
        return f"the parent's takes {what}, which the override does not ({receiver_names})"
    return f"the override passes on {what}, which the parent's does not take ({receiver_names})"


def _fail(cls: type, parent: type, name: str, what: str):
    try:
        trl_version = version("trl")
    except PackageNotFoundError:
        trl_version = "not installed"
    raise UpstreamChangedError(
        f"{cls.__name__} overrides {parent.__name__}.{name} ({parent.__module__}), {what}. sf_hf is tested with "
        f"transformers {TESTED_VERSIONS['transformers']} and TRL {TESTED_VERSIONS['trl']}; installed: transformers "
        f"{version('transformers')}, TRL {trl_version}. Install a tested release, or update sf_hf."
    )
