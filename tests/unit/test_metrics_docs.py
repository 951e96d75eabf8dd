"""The Grafana dashboard and the metrics page against the exporter itself.

Every PromQL expression in docs/grafana-dashboard.json (panel targets and variable queries) is parsed by a
small recursive-descent PromQL parser below (selectors, matchers, ranges and subqueries, offsets,
functions, aggregations with by/without, binary operators with bool/on/ignoring/group_left/group_right,
Grafana's ``$variables``); each metric name it selects must be one the exporter serves
(:func:`celery_memguard.metrics.served_names`, derived from the collector's own table). The metric
table of docs/metrics.md must be that table, row for row. Neither needs prometheus_client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from celery_memguard.metrics import METRICS, served_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
PAGE = ROOT / "docs" / "metrics.md"

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "label_values",  # label_values: Grafana's variable query, parsed like a function
}
BINARY = [("or",), ("and", "unless"), ("==", "!=", "<=", ">=", "<", ">"), ("+", "-"), ("*", "/", "%", "atan2"),
          ("^",)]
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "or", "and",
            "unless", "atan2"}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[A-Za-z_][A-Za-z0-9_:]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<duration>[0-9]+(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdwy]))*)
  | (?P<number>0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=(){}\[\],:@])
""", re.X)


class PromQLError(ValueError):
    pass


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"unexpected {expr[pos:pos + 10]!r} at {pos} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens + [("end", "")]


class Parser:
    """Parses one expression; ``metrics`` collects the metric names its selectors select."""

    def __init__(self, expr: str) -> None:
        self.expr, self.tokens, self.i = expr, tokenize(expr), 0
        self.metrics: set[str] = set()

    def parse(self) -> set[str]:
        self.binary(0)
        self.expect("end")
        return self.metrics

    # -- helpers -----------------------------------------------------------------------------------
    def peek(self, offset: int = 0) -> tuple[str, str]:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at(self, *values: str) -> bool:
        kind, text = self.peek()
        return kind in ("op", "ident") and text in values

    def expect(self, kind: str, text: str | None = None) -> str:
        got_kind, got = self.take()
        if got_kind != kind or (text is not None and got != text):
            raise PromQLError(f"expected {text or kind}, got {got!r} in {self.expr!r}")
        return got

    def labels(self) -> None:
        """``(label, label, ...)`` after by/without/on/ignoring/group_left/group_right."""
        self.expect("op", "(")
        while not self.at(")"):
            self.expect("ident")
            if not self.at(","):
                break
            self.take()
        self.expect("op", ")")

    # -- grammar -----------------------------------------------------------------------------------
    def binary(self, level: int) -> None:
        if level == len(BINARY):
            self.unary()
            return
        right_assoc = BINARY[level] == ("^",)
        self.binary(level + 1)
        while self.at(*BINARY[level]):
            self.take()
            if self.at("bool"):
                self.take()
            if self.at("on", "ignoring"):
                self.take()
                self.labels()
                if self.at("group_left", "group_right"):
                    self.take()
                    if self.at("("):
                        self.labels()
            self.binary(level if right_assoc else level + 1)

    def unary(self) -> None:
        if self.at("+", "-"):
            self.take()
            self.unary()
            return
        self.primary()
        self.postfix()

    def postfix(self) -> None:
        while True:
            if self.at("["):
                self.take()
                self.duration()
                if self.at(":"):
                    self.take()
                    if not self.at("]"):
                        self.duration()
                self.expect("op", "]")
            elif self.at("offset"):
                self.take()
                if self.at("-"):
                    self.take()
                self.duration()
            elif self.at("@"):
                self.take()
                self.expect("number")
            else:
                return

    def duration(self) -> None:
        kind, text = self.take()
        if kind not in ("duration", "var"):
            raise PromQLError(f"expected a duration, got {text!r} in {self.expr!r}")

    def primary(self) -> None:
        kind, text = self.peek()
        if kind in ("number", "string"):
            self.take()
        elif kind == "op" and text == "(":
            self.take()
            self.binary(0)
            self.expect("op", ")")
        elif kind == "op" and text == "{":
            self.matchers()
        elif kind == "ident" and text in AGGREGATIONS and (self.peek(1)[1] in ("(", "by", "without")):
            self.aggregation()
        elif kind == "ident" and text in FUNCTIONS and self.peek(1)[1] == "(":
            self.take()
            self.arguments()
        elif kind == "ident" and text not in KEYWORDS:
            self.take()
            if self.peek()[1] == "(":
                raise PromQLError(f"unknown function {text!r} in {self.expr!r}")
            self.metrics.add(text)
            if self.at("{"):
                self.matchers()
        else:
            raise PromQLError(f"unexpected {text!r} in {self.expr!r}")

    def aggregation(self) -> None:
        self.take()
        if self.at("by", "without"):
            self.take()
            self.labels()
        self.arguments()
        if self.at("by", "without"):
            self.take()
            self.labels()

    def arguments(self) -> None:
        self.expect("op", "(")
        while not self.at(")"):
            self.binary(0)
            if not self.at(","):
                break
            self.take()
        self.expect("op", ")")

    def matchers(self) -> None:
        self.expect("op", "{")
        while not self.at("}"):
            name = self.expect("ident")
            kind, op = self.take()
            if kind != "op" or op not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"expected a matcher operator after {name!r} in {self.expr!r}")
            value = self.expect("string")
            if name == "__name__" and op == "=":
                self.metrics.add(value[1:-1])
            if not self.at(","):
                break
            self.take()
        self.expect("op", "}")


def metrics_of(expr: str) -> set[str]:
    return Parser(expr).parse()


class TestParser:
    @pytest.mark.parametrize(("expr", "names"), [
        ("up", {"up"}),
        ('sum by (reason) (rate(a_total{job=~"$job", x!="y"}[$__rate_interval])) * 60', {"a_total"}),
        ("a * on(job, instance) group_left(node) b", {"a", "b"}),
        ("sum(rate(a[5m])) by (x) / ignoring(y) group_right c > bool 2", {"a", "c"}),
        ("(sum(increase(a[1h])) or vector(0)) + -b offset 5m", {"a", "b"}),
        ('{__name__="a", x="1"} ^ 2 ^ 3', {"a"}),
        ("max_over_time(a[1h:5m]) and topk(3, b)", {"a", "b"}),
        ('label_values(celery_memguard_info{job=~"$job"}, instance)', {"celery_memguard_info", "instance"}),
    ])
    def test_valid_expressions(self, expr: str, names: set[str]) -> None:
        assert names == metrics_of(expr)

    @pytest.mark.parametrize("expr", [
        "sum(a", "a{b=}", "a{b=c}", "rate(a[5m]", "a +", "sum by (x (a)", "a[5]", "nosuchfunc(a)", "a b",
        "a on(x) b", "{x=\"1\"", "a[5m", ")", "",
    ])
    def test_invalid_expressions_are_refused(self, expr: str) -> None:
        with pytest.raises(PromQLError):
            metrics_of(expr)


def _expressions(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every PromQL expression in the dashboard: panel targets' ``expr`` and query variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key == "expr" and isinstance(value, str):
                yield where, value
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield where, value["query"]
            elif key == "definition" and isinstance(value, str):
                yield where, value
            else:
                yield from _expressions(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _expressions(item, f"{path}[{i}]")


class TestDashboard:
    def test_every_metric_queried_is_served(self) -> None:
        dashboard = json.loads(DASHBOARD.read_text())
        served = served_names()
        queried: set[str] = set()
        expressions = list(_expressions(dashboard))
        assert len(expressions) > 20
        for where, expr in expressions:
            names = metrics_of(expr)
            if expr.startswith("label_values("):
                names -= {"instance", "job"}  # the label argument, not a metric
            assert names, (where, expr)
            assert names <= served, (where, expr, names - served)
            queried |= names
        wanted = {"celery_memguard_child_memory_bytes", "celery_memguard_limit_bytes", "celery_memguard_master_memory_bytes",
                  "celery_memguard_pool_memory_bytes", "celery_memguard_available_memory_bytes",
                  "celery_memguard_recycles_total", "celery_memguard_kills_total", "celery_memguard_children_lost_total",
                  "celery_memguard_leak_suspect_bytes_per_call", "celery_memguard_heavy_tasks_total",
                  "celery_memguard_errors_total"}
        assert wanted <= queried, wanted - queried

    def test_panels_have_unique_ids_and_a_datasource_variable(self) -> None:
        dashboard = json.loads(DASHBOARD.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "job", "instance"}
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_metrics_page_lists_the_exporters_table() -> None:
    """docs/metrics.md's table is the collector's: every metric, in order, with its type and labels."""
    rows = re.findall(r"^\| `(celery_memguard_\w+)` \| (\w+) \| ([^|]*) \|", PAGE.read_text(), re.M)
    documented = [(name, kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows]
    assert documented == [(spec.name, spec.kind, spec.labels) for spec in METRICS]


def test_the_metrics_pages_queries_parse_and_use_served_metrics() -> None:
    """The example queries and alerts of docs/metrics.md (```promql blocks, one expression per comment)."""
    blocks = re.findall(r"```promql\n(.*?)```", PAGE.read_text(), re.S)
    expressions: list[str] = []
    for block in blocks:
        for chunk in re.split(r"^#.*$", block, flags=re.M):
            if chunk.strip():
                expressions.append(" ".join(chunk.split()))
    assert len(expressions) >= 5
    for expr in expressions:
        names = metrics_of(expr)
        assert names and names <= served_names(), (expr, names - served_names())
