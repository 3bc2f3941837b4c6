"""User-facing errors: one readable line naming what is wrong and how to fix it."""

from __future__ import annotations


class RaydiffError(Exception):
    """An error caused by the user's input (config, dataset, checkpoint, output folder).

    The CLI prints ``str(err)`` as one line without a traceback (unless ``--debug``).
    Messages follow the pattern ``<where>: <what is wrong>. Fix: <what to do>``.
    """

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        message = f"{self.where}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        # Raised in Ray workers and pickled back to the driver: rebuild from the three parts.
        return type(self), (self.where, self.problem, self.fix)


class ConfigError(RaydiffError):
    """A config file has an unknown key, a wrong type or an out-of-range value."""


class DatasetError(RaydiffError):
    """A dataset folder is missing files, has unreadable files or an inconsistent layout."""


class CheckpointError(RaydiffError):
    """A checkpoint or fitted-state folder is missing files or holds unusable weights."""


class OutputError(RaydiffError):
    """An output folder cannot be written or belongs to a different config."""


def user_error_in(err: BaseException) -> RaydiffError | None:
    """The RaydiffError a worker raised, found inside the exceptions Ray wraps it in (a task's
    ``RayTaskError.cause``, Ray Data's chained ``__cause__``), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RaydiffError):
            return e
        todo.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None
