"""The `medtriad` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medtriad.errors import MedtriadError

app = typer.Typer(
    name="medtriad",
    help="Multi-modal contrastive pre-training on chest X-rays, 12-lead ECGs and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


@app.command()
def synth(
    n: Annotated[int, typer.Option("--n", help="Number of studies.")] = 2000,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_data"),
    seed: Annotated[int, typer.Option(help="Random seed; the cohort is identical for a seed.")] = 0,
    missing: Annotated[float, typer.Option(help="Fraction of studies lacking one modality.")] = 0.1,
    image_size: Annotated[int, typer.Option(help="X-ray side in pixels.")] = 256,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
) -> None:
    """Generate the built-in tri-modal demo cohort (PNG X-rays, WFDB ECGs, reports, manifest)."""
    from medtriad.data.synthetic.cohort import generate_cohort

    manifest = generate_cohort(out, n=n, seed=seed, missing_fraction=missing, image_size=image_size, workers=workers)
    console.print(f"wrote {n} studies: {manifest}")


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="manifest.parquet (or its folder).")],
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first bad file.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Load every file a manifest references and report schema problems and bad files."""
    from medtriad.data.validate import validate_manifest, validation_table

    report = validate_manifest(manifest, workers=workers, fail_fast=fail_fast)
    console.print(validation_table(report))
    if json_out is not None:
        json_out.write_text(report.to_json())
    if not report.ok:
        err_console.print(f"[red]{len(report.bad)} bad samples, {len(report.schema)} schema problems[/red]")
        raise typer.Exit(1)
    console.print("[green]all files load[/green]")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_out"),
    n: Annotated[int, typer.Option("--n", help="Studies in the demo cohort.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
) -> None:
    """Run the main job on the built-in demo cohort, resuming any step already done."""
    from rich.table import Table

    from medtriad.demo import run_demo

    result = run_demo(out, n=n, seed=seed, workers=workers)
    table = Table(title=f"demo: {result.out}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in result.timings.items():
        table.add_row(step, f"{seconds:.1f}")
    console.print(table)
    counts = result.summary.get("counts", {}).get("all", {})
    console.print(f"cohort: {counts} -> {result.manifest}")


def main() -> None:
    """Console entry point: user mistakes become one clear line and a non-zero exit."""
    try:
        app()
    except MedtriadError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
