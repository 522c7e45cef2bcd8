"""Checking what a user typed into a secret provider's form."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.integrations.providers import MAX_FIELD_LENGTH, ProviderSpec


def validate_secret_form(provider: ProviderSpec, form: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(values, errors)``: the cleaned values of the provider's fields, and a message per
    field that is missing or malformed. Values are stripped; empty optional fields are left out.
    """
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for spec in provider.fields:
        raw = form.get(spec.name, "")
        value = raw.strip() if isinstance(raw, str) else ""
        if not value:
            if spec.required:
                errors[spec.name] = f"{spec.label} is required."
            continue
        if len(value) > MAX_FIELD_LENGTH:
            errors[spec.name] = f"{spec.label} is too long (at most {MAX_FIELD_LENGTH} characters)."
            continue
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            errors[spec.name] = f"{spec.label} contains control characters."
            continue
        if spec.pattern and not re.fullmatch(spec.pattern, value):
            errors[spec.name] = f"{spec.label} does not look right" + (f": {spec.help}" if spec.help else ".")
            continue
        values[spec.name] = value
    return values, errors
