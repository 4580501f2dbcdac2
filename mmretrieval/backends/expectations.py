"""The manifest's Great Expectations suite, built in code, and the mapping of failed expectations to rows.

Each expectation carries a reason code; its unexpected rows are quarantined with that reason, except the codes in
:data:`HARD_REASONS`, which stop the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmretrieval.core.schema import MODALITIES, REQUIRED_COLUMNS, SPLITS

if TYPE_CHECKING:
    import pandas as pd

HARD_REASONS = frozenset({"duplicate_id", "missing_column"})
ABSOLUTE_OR_DRIVE = r"^(?:/|\\|[A-Za-z]:)"
PARENT_SEGMENT = r"(?:^|[/\\])\.\.(?:[/\\]|$)"  # non-capturing: pandas warns about match groups


@dataclass(frozen=True)
class SuiteResult:
    success: bool
    row_reasons: dict[int, tuple[str, str]]  # row index -> (reason, message), first failing expectation wins
    hard: list[str]  # messages of hard failures
    summary: list[dict[str, Any]]  # one entry per expectation, for the JSON report
    html: str  # GX's own rendering of the validation result (made offline by prep/data_docs.py)


def _suite_spec(labels: Sequence[str] = ()) -> list[tuple[str, str, Any]]:
    import great_expectations.expectations as gxe

    label_rule = [("unknown_label", f"label must be one of {sorted(labels)} or empty",
                   gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[*labels, ""]))] if labels else []
    return label_rule + [
        ("missing_column", "the manifest must have columns id, modality, path",
         gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False)),
        ("empty_id", "id is empty", gxe.ExpectColumnValueLengthsToBeBetween(column="id", min_value=1)),
        ("duplicate_id", "id appears more than once", gxe.ExpectColumnValuesToBeUnique(column="id")),
        ("unknown_modality", f"modality must be one of {list(MODALITIES)}",
         gxe.ExpectColumnValuesToBeInSet(column="modality", value_set=list(MODALITIES))),
        ("unknown_split", f"split must be one of {list(SPLITS)} or empty",
         gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[*SPLITS, ""])),
        ("absolute_path", "path is absolute; paths must be relative to the dataset root",
         gxe.ExpectColumnValuesToNotMatchRegex(column="path", regex=ABSOLUTE_OR_DRIVE)),
        ("parent_path", "path climbs out of the dataset root with '..'",
         gxe.ExpectColumnValuesToNotMatchRegex(column="path", regex=PARENT_SEGMENT)),
    ]


def run_suite(df: pd.DataFrame, name: str, labels: Sequence[str] = ()) -> SuiteResult:
    """Validate the manifest frame with GX (ephemeral context, no files written)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    ctx = gx.get_context(mode="ephemeral", project_config=config)
    batch = ctx.data_sources.add_pandas("mmr").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    spec = _suite_spec(labels)
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_manifest"))
    for _, _, expectation in spec:
        suite.add_expectation(expectation)
    definition = gx.ValidationDefinition(name=f"{name}_manifest", data=batch, suite=suite)
    validation = ctx.validation_definitions.add(definition)
    result = validation.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")

    row_reasons: dict[int, tuple[str, str]] = {}
    hard: list[str] = []
    summary: list[dict[str, Any]] = []
    # results come back in suite order
    for (reason, message, _), res in zip(spec, result.results, strict=True):
        rows = [int(i) for i in (res.result.get("unexpected_index_list") or [])]
        summary.append({
            "expectation": res.expectation_config.type,
            "kwargs": {k: v for k, v in res.expectation_config.kwargs.items() if k != "batch_id"},
            "success": bool(res.success),
            "reason": reason,
            "unexpected_count": len(rows),
            "first_unexpected_rows": rows[:10],
        })
        if res.success:
            continue
        if reason in HARD_REASONS:
            if reason == "duplicate_id":
                ids = sorted({str(df.at[i, "id"]) for i in rows})
                hard.append(f"{len(rows)} rows share {len(ids)} id(s), e.g. {ids[:5]} (rows {_csv_rows(rows[:5])})")
            else:
                hard.append(f"{message}: {res.result.get('details') or res.result}")
            continue
        for i in rows:
            value = df.at[i, res.expectation_config.kwargs.get("column", "id")]
            row_reasons.setdefault(i, (reason, f"{message}: {value!r}"))
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    result.meta["batch_kwargs"] = {"data_asset_name": name}  # GX's page reads the asset name from there
    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    return SuiteResult(bool(result.success), row_reasons, hard, summary, html)


def _csv_rows(indices: list[int]) -> str:
    """Frame indices -> 1-based CSV line numbers (the header is line 1)."""
    return ", ".join(str(i + 2) for i in indices)
