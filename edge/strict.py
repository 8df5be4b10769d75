"""The base of every validated settings model: the config's sections and the alert policy."""
from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    """Unknown keys are errors, assignments are validated too."""
    # inf/nan from YAML (.inf, .nan) would make a threshold that never fires or a heartbeat
    # that never comes: refused like any other bad number.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads `yes`/`true` as booleans and pydantic would quietly turn them into 1.
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation):
                raise ValueError(f"expected a number or text, not the boolean {str(value).lower()}")
        return value
