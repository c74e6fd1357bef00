"""The service's memoization key of a job: the sha1 of the deterministic JSON of its normalized definition.

As the TypeScript service computes it (`normalizeJobDefinitionForHash`, `JSONStringifyDeterministic`,
`computeSha1`): input files, output files and parameters ordered by name with `localeCompare`, then
`JSON.stringify` with every object's keys sorted and no spaces. Two details matter for equal hashes:
numbers are written as JavaScript writes them (`4.0` is `4`, `1e-7` is `1e-7`, `1e21` is `1e+21`), and
the definition is the one the client sent (absent optional fields stay absent).

`localeCompare` is ICU's collation; names are identifiers in practice, for which this module's order is the
same: punctuation before digits before letters, letters compared without case first, then lowercase before
uppercase. Names that differ only in accents or in the order of two punctuation marks may sort otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

NAMED_LISTS = ("inputFiles", "outputFiles", "parameters")


def normalized_job_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition with its named lists ordered by name. The service sorts them in place, so the job it
    stores (and answers) has them in this order too."""
    return {**definition, **{key: sorted(definition[key], key=lambda item: _collation_key(item["name"]))
                             for key in NAMED_LISTS}}


def job_definition_hash(definition: dict[str, Any]) -> str:
    return hashlib.sha1(deterministic_json(normalized_job_definition(definition)).encode()).hexdigest()


def deterministic_json(value: Any) -> str:
    """`JSONStringifyDeterministic`: JSON.stringify with the keys of every object sorted."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key, ensure_ascii=False)}:{deterministic_json(value[key])}"
                              for key in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(deterministic_json(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return javascript_number(value)
    return json.dumps(value, ensure_ascii=False)


def javascript_number(value: int | float) -> str:
    """A number as JavaScript's `Number.prototype.toString` writes it (ECMAScript's Number::toString)."""
    number = float(value)
    if not math.isfinite(number):
        return "null"  # as JSON.stringify writes NaN and the infinities
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    shortest = Decimal(repr(abs(number))).normalize()  # repr: the shortest digits that round-trip, as in JS
    _, digit_tuple, exponent = shortest.as_tuple()
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), exponent + len(digits)  # the value is 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


def _collation_key(name: str) -> tuple:
    """`localeCompare` order for identifier-like names (see the module's docstring)."""
    primary = tuple((0, ord(c)) if not c.isalnum() else (1, ord(c)) if c.isdigit() else (2, ord(c.lower()))
                    for c in name)
    return primary, tuple(c.isupper() for c in name)
