"""Heron's Grafana dashboards as the tests read them: the shipped files, their panels and
queries, and the metric and label names a PromQL expression uses (a small reader of PromQL's
lexical structure, enough for what the dashboards write)."""

import json
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

GRAFANA = Path(str(resources.files("heron.monitor") / "grafana"))
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"

# Grafana's own variables a query may use; the rest are the dashboard's templating.
BUILTIN = {"__rate_interval", "__interval", "__range"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(r"\$\{?\w+\}?|\d+(?:\.\d+)?(?:e[+-]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_LABEL_VALUES = re.compile(r"label_values\((\w+(?:\{[^}]*\})?),\s*(\w+)\)")


def dashboards() -> dict[str, dict[str, Any]]:
    """Every shipped dashboard by its file's stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(board: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard's panels."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def query_variables(board: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Each query variable, in the dashboard's order: the (series selector, label) of its
    label_values() (a selector may use the variables before it)."""
    found = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert match, variable["query"]
            found[variable["name"]] = (match[1], match[2])
    return found


def variables(expr: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """The expression as Grafana sends it, with the variables' values (all must be given)."""
    return _VARIABLE.sub(lambda m: values[m[1] or m[2]], expr)


def _bare(expr: str) -> str:
    """The expression without strings, label matchers, ranges and grouping clauses."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    return _GROUPING.sub("", text)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and aggregations, keywords,
    numbers and variables are not)."""
    text = _bare(expr)
    names = set()
    for match in _TOKEN.finditer(text):
        word = match[0]
        if word.startswith("$") or word[0].isdigit() or word.lower() in _KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    text = _STRING.sub(lambda m: '"' + "x" * (len(m[0]) - 2) + '"', expr)
    found = set()
    for inner in _MATCHERS.findall(text):
        found |= {m for m in _MATCHER.findall(inner)}
    for inner in _GROUPING.findall(_RANGE.sub("", text)):
        found |= {n.strip() for n in inner.split(",") if n.strip()}
    return found
