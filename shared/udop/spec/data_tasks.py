"""Spec models of the data task types (extract, transform, validate, load).

Their execution lives in ``layers/transforms`` and ``layers/connectors``; only their shape is here,
so that one JSON Schema covers a whole definition. Steps and rules are written as one-key mappings
(``- filter: "dep_delay > 0"``); the key picks the model, so an error names the step's own fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from udop.spec.base import SpecModel, TaskBase
from udop.spec.types import Duration, TaskId

__all__ = [
    "DATA_TASK_MODELS",
    "FILE_CONNECTORS",
    "FILE_EXTENSIONS",
    "ExtractTask",
    "LoadTask",
    "Rule",
    "SourceSpec",
    "Step",
    "TargetSpec",
    "TransformTask",
    "ValidateTask",
    "data_inputs",
    "fusable",
    "fused_chains",
]

#: connectors the transform layer reads and writes itself; any other name goes to ``udop.connectors``
FILE_CONNECTORS: tuple[str, ...] = ("csv", "parquet", "json", "ndjson")
#: a file connector's target path ending in one of these names one file; any other path a folder
FILE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet",), "csv": (".csv", ".tsv", ".txt"), "json": (".json",),
    "ndjson": (".ndjson", ".jsonl")}

Severity = Literal["error", "warn"]
#: one name, or a list of names (``unique: id`` and ``unique: [id]`` mean the same)
_ONE_OR_MANY = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
Names = Annotated[
    list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), WithJsonSchema(_ONE_OR_MANY)
]
ColumnList = Annotated[Names, Field(min_length=1)]
#: a DuckDB memory size such as '2GB' or '512MB'
MemorySize = Annotated[
    str,
    Field(
        pattern=r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$",
        description="a memory size, e.g. '512MB' or '2GB'",
    ),
]


def _yaml_on(value: Any) -> Any:
    """YAML 1.1 reads an unquoted ``on:`` key as ``True``; take it back as the key ``on``."""
    if isinstance(value, dict) and True in value and "on" not in value:
        return {("on" if k is True else k): v for k, v in value.items()}
    return value


def _one_key(value: Any, kinds: frozenset[str], extras: frozenset[str] = frozenset()) -> str | None:
    """The kind of a one-key step/rule mapping (pydantic discriminator); None lets pydantic report it."""
    if isinstance(value, BaseModel):
        return next((k for k in kinds if k in type(value).model_fields), None)
    if isinstance(value, dict):
        keys = [k for k in value if k not in extras]
        if len(keys) == 1 and keys[0] in kinds:
            return str(keys[0])
    return None


# ----------------------------------------------------------------------------------------------
# sources and targets


class SourceSpec(BaseModel):
    """Where an ``extract`` reads. File connectors (csv, parquet, json, ndjson) take ``path``; any other
    connector (postgres, s3, http, ...) is looked up in ``udop.connectors`` and validates its options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    connector: str = Field(description="csv, parquet, json, ndjson, or an installed connector's name")
    connection: str | None = Field(None, description="a named connection from spec.connections")
    path: str | None = Field(
        None,
        description="file connectors: a path or glob (`data/*.csv`, "
        "`data/**/*.parquet`); ${params.x} is rendered",
    )
    hive_partitioning: bool | None = Field(
        None, description="file connectors: read `key=value` folders as columns (default: detect)"
    )
    union_by_name: bool = Field(
        False, description="file connectors: files with different columns are combined by column name"
    )
    delimiter: str | None = Field(None, description="csv: field separator (default ',')")
    header: bool | None = Field(None, description="csv: the first row holds column names (default true)")
    quote: str | None = Field(None, description="csv: quote character (default '\"')")
    null_values: list[str] | None = Field(
        None, description="csv: strings read as NULL (default: 'NA' and the empty string)"
    )
    columns: dict[str, str] | None = Field(
        None,
        description="column name -> SQL type; csv: overrides the "
        "detected type of these columns; json/ndjson: "
        "the columns to read, with their types",
    )

    @model_validator(mode="after")
    def _file_options(self) -> SourceSpec:
        if self.connector in FILE_CONNECTORS:
            if not self.path:
                raise ValueError(f"connector {self.connector!r} needs a 'path' (a file or glob)")
            if self.model_extra:
                raise ValueError(
                    f"connector {self.connector!r} does not take {', '.join(map(repr, self.model_extra))}"
                )
            csv_only = {"delimiter": self.delimiter, "header": self.header, "quote": self.quote}
            given = [k for k, v in csv_only.items() if v is not None]
            if given and self.connector != "csv":
                raise ValueError(f"{', '.join(given)} apply to csv only")
        return self


class TargetSpec(BaseModel):
    """Where a ``load`` writes. File connectors take ``path``: a file name with the format's extension
    (``out/delays.parquet``) writes one file; anything else is a folder of part files."""

    model_config = ConfigDict(extra="allow", frozen=True)

    connector: str = Field(description="csv, parquet, json, ndjson, or an installed connector's name")
    connection: str | None = Field(None, description="a named connection from spec.connections")
    path: str | None = Field(None, description="file connectors: output file or folder; ${...} rendered")
    mode: str = Field(
        "overwrite",
        description="file connectors: overwrite | append; other connectors define theirs (e.g. upsert)",
    )
    partition_by: Names | None = Field(None, description="write `col=value/` folders (hive style)")
    keys: Names | None = Field(None, description="key columns, for connectors that merge/upsert")
    delimiter: str | None = Field(None, description="csv: field separator (default ',')")
    header: bool | None = Field(None, description="csv: write a header row (default true)")

    @model_validator(mode="after")
    def _file_options(self) -> TargetSpec:
        if self.connector in FILE_CONNECTORS:
            if not self.path:
                raise ValueError(f"connector {self.connector!r} needs a 'path' (a file or folder)")
            if self.mode not in ("overwrite", "append"):
                raise ValueError(f"mode {self.mode!r}: file connectors write with 'overwrite' or 'append'")
            if self.model_extra:
                raise ValueError(
                    f"connector {self.connector!r} does not take {', '.join(map(repr, self.model_extra))}"
                )
            if self.partition_by and self.connector not in ("parquet", "csv"):
                raise ValueError("partition_by is supported for parquet and csv targets")
        return self


# ----------------------------------------------------------------------------------------------
# data-quality rules


class RuleBase(SpecModel):
    severity: Severity = Field(
        "error", description="error: the task fails (after all rules ran); warn: the result is only recorded"
    )
    name: str | None = Field(None, description="a name for the rule in results (default: derived)")


class NotNullRule(RuleBase):
    not_null: ColumnList = Field(description="columns that must not be NULL")


class UniqueRule(RuleBase):
    unique: ColumnList = Field(description="a column, or several that together must be unique")


class AcceptedValues(SpecModel):
    column: str
    values: list[Any] = Field(min_length=1, description="allowed values; NULL passes (use not_null)")


class AcceptedValuesRule(RuleBase):
    accepted_values: AcceptedValues


class RangeSpec(SpecModel):
    column: str
    min: Any = Field(None, description="inclusive lower bound (number, date or string)")
    max: Any = Field(None, description="inclusive upper bound")

    @model_validator(mode="after")
    def _bound(self) -> RangeSpec:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        return self


class RangeRule(RuleBase):
    range: RangeSpec = Field(description="values outside [min, max] fail; NULL passes")


class RegexSpec(SpecModel):
    column: str
    pattern: str = Field(description="a regular expression (RE2) the whole value must match")


class RegexRule(RuleBase):
    regex: RegexSpec


class RowCountSpec(SpecModel):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bound(self) -> RowCountSpec:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        return self


class RowCountRule(RuleBase):
    row_count: RowCountSpec


class FreshnessSpec(SpecModel):
    column: str = Field(description="a date or timestamp column")
    max_age: Duration = Field(description="the newest value must be at most this old")
    relative_to: Literal["now", "logical_date"] = Field(
        "now",
        description="now: the wall clock; logical_date: the run's logical date and time "
        "(backfills stay valid)",
    )


class FreshnessRule(RuleBase):
    freshness: FreshnessSpec


class ExpectRule(RuleBase):
    expect: str = Field(
        description="a SQL predicate every row must satisfy; rows where it is false fail "
        "(NULL passes); ${params.x} is a bound parameter"
    )


RULE_KINDS = frozenset(
    {"not_null", "unique", "accepted_values", "range", "regex", "row_count", "freshness", "expect"}
)

Rule = Annotated[
    Annotated[NotNullRule, Tag("not_null")]
    | Annotated[UniqueRule, Tag("unique")]
    | Annotated[AcceptedValuesRule, Tag("accepted_values")]
    | Annotated[RangeRule, Tag("range")]
    | Annotated[RegexRule, Tag("regex")]
    | Annotated[RowCountRule, Tag("row_count")]
    | Annotated[FreshnessRule, Tag("freshness")]
    | Annotated[ExpectRule, Tag("expect")],
    Discriminator(
        lambda v: _one_key(v, RULE_KINDS, frozenset({"severity", "name"})),
        custom_error_type="unknown_rule",
        custom_error_message="a rule is one of "
        + ", ".join(sorted(RULE_KINDS))
        + " (plus optional severity and name)",
    ),
]


# ----------------------------------------------------------------------------------------------
# transform steps


class SelectColumns(SpecModel):
    columns: list[str] | None = Field(None, description="keep these columns, in this order")
    exclude: list[str] | None = Field(None, description="keep every column but these")

    @model_validator(mode="after")
    def _one(self) -> SelectColumns:
        if (self.columns is None) == (self.exclude is None):
            raise ValueError("give exactly one of 'columns' or 'exclude'")
        return self


class SelectStep(SpecModel):
    select: list[str] | SelectColumns = Field(
        description="column names to keep (a list), or {exclude: [...]}"
    )


class RenameStep(SpecModel):
    rename: dict[str, str] = Field(min_length=1, description="old name -> new name")


class CastStep(SpecModel):
    cast: dict[str, str] = Field(
        min_length=1, description="column -> SQL type, e.g. decimal(15,2), date, bigint, varchar"
    )


class FilterStep(SpecModel):
    filter: str = Field(description="a SQL predicate; rows where it is true are kept")


class DeriveStep(SpecModel):
    derive: dict[str, str] = Field(
        min_length=1,
        description="new (or replaced) column -> SQL expression; later entries may use earlier ones",
    )


AggregateFunction = Literal["sum", "avg", "min", "max", "count", "count_distinct"]


class AggregateSpec(SpecModel):
    by: Names = Field(default_factory=list, description="group by these columns (none: one row)")
    metrics: dict[str, str | dict[AggregateFunction, str]] = Field(
        min_length=1,
        description="output column -> an aggregate SQL expression (`avg(dep_delay)`, "
        "`count(*)`) or {function: column-or-expression} with function one "
        "of sum, avg, min, max, count, count_distinct",
    )

    @field_validator("metrics")
    @classmethod
    def _one_function(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, metric in value.items():
            if isinstance(metric, dict) and len(metric) != 1:
                raise ValueError(f"metric {name!r}: give one {{function: column}}")
        return value


class AggregateStep(SpecModel):
    aggregate: AggregateSpec


JoinHow = Literal["inner", "left", "right", "full", "semi", "anti"]


class JoinSpec(SpecModel):
    with_: TaskId = Field(alias="with", description="the other input: a task id in depends_on")
    on: Names | dict[str, str] = Field(
        description="key columns with the same name on both sides, or {left_column: right_column}"
    )
    how: JoinHow = "inner"
    suffix: str | None = Field(
        None, description="appended to the other side's non-key columns whose names clash (default: _<with>)"
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, value: Any) -> Any:
        return _yaml_on(value)

    @field_validator("on")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if not value:
            raise ValueError("give at least one key column")
        return value


class JoinStep(SpecModel):
    join: JoinSpec


class UnionSpec(SpecModel):
    with_: Annotated[
        list[TaskId],
        BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
        WithJsonSchema(_ONE_OR_MANY),
    ] = Field(alias="with", min_length=1, description="task ids in depends_on")
    by_name: bool = Field(True, description="match columns by name (missing ones become NULL)")
    distinct: bool = Field(False, description="drop duplicate rows (UNION instead of UNION ALL)")


class UnionStep(SpecModel):
    union: UnionSpec


class DedupeSpec(SpecModel):
    on: ColumnList = Field(description="key columns: one row is kept per key")
    order_by: Names = Field(
        default_factory=list,
        description="tie-break: the first row in this order wins, e.g. ['updated_at desc']",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, value: Any) -> Any:
        return _yaml_on(value)


class DistinctStep(SpecModel):
    distinct: Literal[True] | DedupeSpec = Field(
        description="true: drop duplicate rows; {on: [...], order_by: [...]}: keep one row per key"
    )


class SortStep(SpecModel):
    sort: Names = Field(min_length=1, description="'column', 'column desc', 'expr asc nulls last'")


class LimitStep(SpecModel):
    limit: int = Field(ge=0, description="keep at most this many rows")


class SqlStep(SpecModel):
    sql: str = Field(
        description="one SELECT; `this` is the data so far and every dependency is a "
        "table named by its task id; ${params.x} is a bound parameter"
    )


MaskMethod = Literal["hash", "redact"]


class KeepLast(SpecModel):
    keep_last: int = Field(ge=1, le=64, description="keep the last N characters, mask the rest with '*'")


class MaskSpec(SpecModel):
    columns: dict[str, MaskMethod | KeepLast] = Field(
        min_length=1,
        description="column -> hash (salted SHA-256, hex), redact (the mask text; NULL stays NULL) or "
        "{keep_last: N}",
    )
    salt: dict[str, str] | None = Field(
        None,
        description="the salt of `hash`: a secret reference ({secret: name}, {env: NAME}, {file: PATH}); "
        "required when a column is hashed",
    )

    @field_validator("salt")
    @classmethod
    def _reference(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        kinds = [k for k in ("env", "file", "secret") if k in value]
        if len(kinds) != 1 or set(value) - {"env", "file", "secret", "key"}:
            raise ValueError("salt is a secret reference: {secret: name}, {env: NAME} or {file: PATH}")
        return value

    @model_validator(mode="after")
    def _salted(self) -> MaskSpec:
        hashed = [c for c, m in self.columns.items() if m == "hash"]
        if hashed and self.salt is None:
            raise ValueError(f"column {hashed[0]!r} is hashed: give a salt ({{secret: name}} or "
                             "{env: NAME}); an unsalted hash of an email or card number is "
                             "reversible by lookup")
        return self


class MaskStep(SpecModel):
    mask: MaskSpec


class CheckStep(SpecModel):
    check: list[Rule] = Field(min_length=1, description="quality rules over the data at this point")


STEP_KINDS = frozenset(
    {
        "select",
        "rename",
        "cast",
        "filter",
        "derive",
        "aggregate",
        "join",
        "union",
        "distinct",
        "sort",
        "limit",
        "sql",
        "mask",
        "check",
    }
)

Step = Annotated[
    Annotated[SelectStep, Tag("select")]
    | Annotated[RenameStep, Tag("rename")]
    | Annotated[CastStep, Tag("cast")]
    | Annotated[FilterStep, Tag("filter")]
    | Annotated[DeriveStep, Tag("derive")]
    | Annotated[AggregateStep, Tag("aggregate")]
    | Annotated[JoinStep, Tag("join")]
    | Annotated[UnionStep, Tag("union")]
    | Annotated[DistinctStep, Tag("distinct")]
    | Annotated[SortStep, Tag("sort")]
    | Annotated[LimitStep, Tag("limit")]
    | Annotated[SqlStep, Tag("sql")]
    | Annotated[MaskStep, Tag("mask")]
    | Annotated[CheckStep, Tag("check")],
    Discriminator(
        lambda v: _one_key(v, STEP_KINDS),
        custom_error_type="unknown_step",
        custom_error_message="a step is a mapping with one key, one of " + ", ".join(sorted(STEP_KINDS)),
    ),
]


def step_kind(step: BaseModel) -> str:
    """The key a step was written with (``filter``, ``join``, ...)."""
    return next(iter(type(step).model_fields))


def rule_kind(rule: BaseModel) -> str:
    return next(k for k in type(rule).model_fields if k in RULE_KINDS)


# ----------------------------------------------------------------------------------------------
# the task types


class DataTaskBase(TaskBase):
    memory_limit: MemorySize | None = Field(
        None,
        description="DuckDB memory limit for this task; beyond "
        "it DuckDB spills to disk (default: "
        "UDOP_DUCKDB_MEMORY_LIMIT)",
    )


class ExtractTask(DataTaskBase):
    """Reads a source. Parquet files are read in place: the task records a snapshot of them (files with
    size and mtime, or ETag on S3, and the schema) and the tasks downstream read the files themselves;
    any other source, or ``materialize: true``, is copied into a Parquet dataset at the task's output
    location."""

    type: Literal["extract"]
    source: SourceSpec
    materialize: bool = Field(
        False,
        description="copy the source into the run's folder as Parquet (a frozen landing copy) instead of "
        "reading Parquet files in place",
    )
    on_source_change: Literal["fail", "resnapshot"] = Field(
        "fail",
        description="when a source read in place changed after this task recorded it (a resume, a retry "
        "or a later task finds other files): fail with an error, or read the files as they are now",
    )


def _primary_input(task: Any) -> Any:
    if task.input is not None and task.input not in task.depends_on:
        raise ValueError(f"input {task.input!r} is not in depends_on")
    if task.input is None and not task.depends_on:
        raise ValueError("a data task needs an input: list it in depends_on")
    return task


def data_inputs(task: Any) -> list[str]:
    """The dependencies whose data a data task reads: its input, the tasks its join/union steps name,
    and, when it has a ``sql`` step, every dependency (other dependencies only order the run)."""
    steps = list(getattr(task, "steps", ()))
    if any(isinstance(s, SqlStep) for s in steps):
        return list(task.depends_on)
    wanted = {task.primary_input}
    for step in steps:
        if isinstance(step, JoinStep):
            wanted.add(step.join.with_)
        elif isinstance(step, UnionStep):
            wanted.update(step.union.with_)
    return [d for d in task.depends_on if d in wanted]


class TransformTask(DataTaskBase):
    """Applies steps to an input (by default the first of depends_on), compiled to one DuckDB query."""

    type: Literal["transform"]
    input: TaskId | None = Field(
        None, description="the data the steps start from (default: the first of depends_on)"
    )
    steps: list[Step] = Field(min_length=1)
    engine: Literal["duckdb", "spark", "athena"] = Field(
        "duckdb",
        description="where the SQL runs: duckdb (in the task's process), spark (PySpark locally, EMR "
        "Serverless on AWS) or athena (on AWS; DuckDB locally). The same steps are transpiled from "
        "DuckDB SQL with sqlglot; see docs/engines.md",
    )
    fuse: bool = Field(
        True, description="when only a file load reads this task's output, run the steps inside the load's "
        "query instead of writing them to Parquet first (see docs/data-tasks.md, Fusion)")

    @property
    def primary_input(self) -> str:
        return self.input or self.depends_on[0]

    @model_validator(mode="after")
    def _inputs_known(self) -> TransformTask:
        _primary_input(self)
        for index, step in enumerate(self.steps):
            others: list[str] = []
            if isinstance(step, JoinStep):
                others = [step.join.with_]
            elif isinstance(step, UnionStep):
                others = list(step.union.with_)
            for other in others:
                if other not in self.depends_on:
                    raise ValueError(f"steps[{index}] ({step_kind(step)}): {other!r} is not in depends_on")
        return self


class ValidateTask(DataTaskBase):
    """Checks rules over an input; its output is the input, passed through when no error rule failed."""

    type: Literal["validate"]
    input: TaskId | None = Field(None, description="the data checked (default: the first of depends_on)")
    rules: list[Rule] = Field(min_length=1)
    sample_rows: int = Field(5, ge=0, le=100, description="failing rows kept per rule as examples")
    engine: Literal["duckdb", "spark", "athena"] = Field(
        "duckdb",
        description="where the SQL runs: duckdb (in the task's process), spark (PySpark locally, EMR "
        "Serverless on AWS) or athena (on AWS; DuckDB locally). The same steps are transpiled from "
        "DuckDB SQL with sqlglot; see docs/engines.md",
    )

    @property
    def primary_input(self) -> str:
        return self.input or self.depends_on[0]

    @model_validator(mode="after")
    def _inputs_known(self) -> ValidateTask:
        _primary_input(self)
        if self.engine == "athena":
            raise ValueError("engine: validate tasks run on duckdb or spark (athena runs transform steps "
                             "only; validate an athena transform's output with engine: duckdb or spark)")
        return self


class LoadTask(DataTaskBase):
    """Writes an input (by default the first of depends_on) to a target."""

    type: Literal["load"]
    input: TaskId | None = Field(None, description="the data written (default: the first of depends_on)")
    target: TargetSpec

    @property
    def primary_input(self) -> str:
        return self.input or self.depends_on[0]

    @model_validator(mode="after")
    def _inputs_known(self) -> LoadTask:
        _primary_input(self)
        return self


DATA_TASK_MODELS: tuple[type[TaskBase], ...] = (ExtractTask, TransformTask, ValidateTask, LoadTask)


def fusable(transform: Any, load: Any, *, databases: frozenset[str] = frozenset()) -> bool:
    """Whether ``transform`` may run inside ``load``'s query (docs/data-tasks.md, "Fusion"): ``load``
    reads it alone and writes files whose row count is the transform's (a single file appended to
    also holds its earlier rows) or, where the caller can fuse them, writes into a database of
    ``databases`` (connector names: the local executor's SQL loads), and ``transform`` has no ``check``
    step (whose results must come from the data before the load) and does not say ``fuse: false``.
    The one rule of the local executor and of the compiler."""
    if transform.type != "transform" or load.type != "load" or not getattr(transform, "fuse", True):
        return False
    if getattr(transform, "engine", "duckdb") != "duckdb":  # its query runs elsewhere, not in the load's
        return False
    if transform.foreach is not None or load.foreach is not None or list(load.depends_on) != [transform.id]:
        return False
    if any(isinstance(step, CheckStep) for step in transform.steps):
        return False
    target = load.target
    if target.connector in databases:
        return True
    if target.connector not in FILE_CONNECTORS:
        return False
    single = str(target.path or "").lower().endswith(FILE_EXTENSIONS[target.connector])
    return not (target.mode == "append" and single)


def fused_chains(pipeline: Any) -> dict[str, str]:
    """transform id -> the id of the file load that alone reads it, for every fusable pair."""
    readers: dict[str, list[Any]] = {}
    for task in pipeline.spec.tasks:
        for dep in task.depends_on:
            readers.setdefault(dep, []).append(task)
    chains: dict[str, str] = {}
    for task in pipeline.spec.tasks:
        after = readers.get(task.id, [])
        if task.type == "transform" and len(after) == 1 and fusable(task, after[0]):
            chains[task.id] = after[0].id
    return chains
