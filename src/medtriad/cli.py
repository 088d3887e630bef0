"""The `medtriad` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console

from medtriad.config import Config
from medtriad.errors import MedtriadError

app = typer.Typer(
    name="medtriad",
    help="Multi-modal contrastive pre-training on chest X-rays, 12-lead ECGs and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: a path or an error message stays on one line that can be copied or grepped;
# tables still fit the terminal.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, as rich's console does, so
    that a handler set up under a replaced stderr (a test runner's capture) never writes to a
    closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    from rich.logging import RichHandler

    # In a terminal, rich's layout; in a log file or a pipe, whole lines, so that a path in a
    # message is never broken across lines.
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


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


prepare_app = typer.Typer(help="Turn a dataset into a manifest, or a manifest into training shards.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")

SetOption = Annotated[list[str], typer.Option("--set", help="Override any config value: dotted.key=value (repeatable).")]


def _config(path: Path | None, overrides: list[str], **flags: object) -> Config:
    from medtriad.config import load_config

    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(path, [*overrides, *extra])


def _add_preparer_commands() -> None:
    """One `medtriad prepare <dataset>` command per preparer, its options read from the
    preparer's own signature and help (medtriad.data.sources.option_help)."""
    import inspect

    from medtriad.data.sources import PREPARERS, option_help, prepare_dataset

    for name in PREPARERS:
        options = option_help(name)

        def command(root: Path, out: Path, _name: str = name, **kwargs: object) -> None:
            from medtriad.data.sources import summary_table

            summary = prepare_dataset(_name, root, out, **kwargs)
            console.print(summary_table(summary))
            console.print(f"manifest written: {out / 'manifest.parquet'}")

        params = [
            inspect.Parameter("root", inspect.Parameter.KEYWORD_ONLY,
                              annotation=Annotated[Path, typer.Option("--root", help="The dataset folder as downloaded.")]),
            inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY,
                              annotation=Annotated[Path, typer.Option("--out", help="Folder for manifest.parquet and prepare_summary.json.")]),
        ]
        for opt, meta in options.items():
            params.append(inspect.Parameter(opt, inspect.Parameter.KEYWORD_ONLY, default=meta["default"],
                                            annotation=Annotated[meta["type"], typer.Option(help=meta["help"])]))

        def make(f: object, n: str, ps: list[inspect.Parameter]) -> object:
            def wrapper(**kwargs: object) -> None:
                f(kwargs.pop("root"), kwargs.pop("out"), n, **kwargs)  # type: ignore[operator]

            wrapper.__signature__ = inspect.Signature(ps)  # type: ignore[attr-defined]
            wrapper.__annotations__ = {p.name: p.annotation for p in ps}
            doc = (PREPARERS[n].__doc__ or f"Prepare {n}.").strip().splitlines()[0]
            wrapper.__doc__ = doc
            return wrapper

        prepare_app.command(name)(make(command, name, params))


@prepare_app.command("shards")
def prepare_shards_cmd(
    manifest: Annotated[Path, typer.Argument(help="manifest.parquet to preprocess.")],
    out: Annotated[Path, typer.Option("--out", help="Shard folder to write.")],
    config: Annotated[Path, typer.Option("--config", help="Config whose data and text settings to apply.")],
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first bad file.")] = False,
    overrides: SetOption = [],  # noqa: B006 - typer reads the default
) -> None:
    """Preprocess a manifest once into memory-mapped arrays for fast training."""
    from medtriad.data.shards import prepare_shards_for_config

    folder = prepare_shards_for_config(manifest, out, _config(config, overrides), workers=workers, fail_fast=fail_fast)
    console.print(f"shards written: {folder}")


_add_preparer_commands()


@app.command()
def pretrain(
    config: Annotated[Path, typer.Argument(help="YAML config (e.g. configs/demo.yaml).")],
    data: Annotated[Path, typer.Option("--data", help="Manifest or shard folder.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics, model).")],
    resume: Annotated[str | None, typer.Option(help="'latest' or a checkpoint folder to continue from.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Sets train.epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Sets train.max_steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sets train.batch_size (global).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sets seed.")] = None,
    device: Annotated[str | None, typer.Option(help="Sets train.device: auto, cpu, cuda.")] = None,
    overrides: SetOption = [],  # noqa: B006 - typer reads the default
) -> None:
    """Contrastive pre-training (single process, or under torchrun for DDP)."""
    from medtriad.train.trainer import train

    cfg = _config(config, overrides, **{"train.epochs": epochs, "train.max_steps": max_steps,
                                         "train.batch_size": batch_size, "seed": seed, "train.device": device})
    result = train(cfg, data, out, resume=resume)
    if result.final_metrics:
        keys = [k for k in result.final_metrics if k.endswith(("/R@1", "/R@5")) or k == "val/loss"]
        console.print({k: round(result.final_metrics[k], 4) for k in keys})
    console.print(f"{result.steps} steps; model saved in {result.run_dir / 'model'}")


@app.command("model-summary")
def model_summary_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config.")],
    overrides: SetOption = [],  # noqa: B006 - typer reads the default
) -> None:
    """Parameter counts per modality (trainable / total) of the model a config builds."""
    from medtriad.models.summary import model_summary, summary_table

    console.print(summary_table(model_summary(_config(config, overrides))))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder of a trained model.")],
    data: Annotated[Path, typer.Option("--data", help="Manifest or shard folder.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN_DIR/evaluation).")] = None,
    split: Annotated[str, typer.Option(help="Held-out split to evaluate.")] = "test",
    tasks: Annotated[str, typer.Option(help="Comma-separated: zeroshot,retrieval,probe,robustness,missing,embedding_map.")] = "",
    label_set: Annotated[list[str], typer.Option("--label-set", help="Built-in name or YAML file (repeatable).")] = [],  # noqa: B006
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates (patients resampled).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for bootstrap, subsets and distractors.")] = 0,
    fractions: Annotated[str, typer.Option(help="Label fractions for probes, comma-separated.")] = "0.01,0.1,1",
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune the encoder with a head for this many epochs (0: off).")] = 0,
    distractors: Annotated[int, typer.Option(help="Distractors per tuple-retrieval query.")] = 9,
    severities: Annotated[str, typer.Option(help="Corruption severities, comma-separated.")] = "1,2,3,4,5",
    embedding_label: Annotated[str | None, typer.Option(help="Label colouring the 2-D embedding map.")] = None,
    embedding_method: Annotated[str, typer.Option(help="pca or tsne.")] = "pca",
) -> None:
    """Zero-shot, retrieval, probes and robustness with bootstrap intervals; results.json + report.html."""
    from medtriad.evaluate.run import TASKS, evaluate_run

    chosen = [t.strip() for t in tasks.split(",") if t.strip()] or list(TASKS)
    results = evaluate_run(
        run_dir, data, out, split=split, tasks=chosen, label_set=label_set or None, bootstrap=bootstrap, seed=seed,
        fractions=_floats(fractions), finetune_epochs=finetune_epochs, n_distractors=distractors,
        severities=[int(x) for x in _floats(severities)], embedding_label=embedding_label,
        embedding_method=embedding_method,
    )
    for name, per_modality in results.get("zeroshot", {}).items():
        for modality, entry in per_modality.items():
            lo, p, hi = entry["macro"]["auroc"]
            console.print(f"zero-shot {name} ({modality}): macro AUROC {p:.3f} [{lo:.3f}, {hi:.3f}]")
    folder = Path(out) if out else Path(run_dir) / "evaluation"
    console.print(f"results: {folder / 'results.json'}; report: {folder / 'report.html'}")


# the X-ray occlusion options of `explain` and `explain-check`
OcclusionOn = Annotated[bool, typer.Option(help="Compute the X-ray occlusion map (the slowest map).")]
OcclusionWindow = Annotated[int | None, typer.Option(help="Occlusion window side, model-input pixels (default: the patch size).")]
OcclusionStride = Annotated[int | None, typer.Option(help="Occlusion stride, pixels (default: a quarter of the window).")]
OcclusionFill = Annotated[str, typer.Option(help="What fills an occluded window: reference (the mean training X-ray without a finding), mean, blur or mirror (the other side); several joined by '+' average their drops, by '|' keep the largest; both = mean+blur; auto = mean|reference if the model holds a reference X-ray, else mean|mirror.")]


def _occlusion(on: bool, window: int | None, stride: int | None, fill: str) -> Any:
    """The X-ray occlusion settings of the CLI options (None when switched off)."""
    from medtriad.errors import ConfigError
    from medtriad.explain.attribution import Occlusion, occlusion_fill_parts

    try:
        occlusion_fill_parts(fill)
    except ConfigError as exc:  # named after the option the user typed
        raise typer.BadParameter(exc.reason, param_hint="--occlusion-fill") from None
    return Occlusion(window, stride, fill) if on else None


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or saved model folder.")],
    cxr: Annotated[Path | None, typer.Option(help="X-ray file (PNG/JPEG/DICOM).")] = None,
    ecg: Annotated[Path | None, typer.Option(help="ECG record (.hea/.dat/.mat/.npy).")] = None,
    text: Annotated[str | None, typer.Option(help="Report text; [RAD]/[ECG] markers optional.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("explain_out"),
    ig_steps: Annotated[int, typer.Option(help="Integrated-gradients steps for report words.")] = 32,
    ig_baseline: Annotated[str, typer.Option(help="Integrated-gradients baseline: pad or zeros.")] = "pad",
    shifts: Annotated[int, typer.Option(help="X-ray maps on a grid this many times finer (shift and stitch; divides the patch size).")] = 1,
    occlusion: OcclusionOn = True,
    occlusion_window: OcclusionWindow = None,
    occlusion_stride: OcclusionStride = None,
    occlusion_fill: OcclusionFill = "auto",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Explain a match between two or three inputs: X-ray patches, ECG segments, report words."""
    from medtriad.explain import explain_inputs

    occ = _occlusion(occlusion, occlusion_window, occlusion_stride, occlusion_fill)
    result = explain_inputs(run_dir, cxr=cxr, ecg=ecg, text=text, out=out, ig_steps=ig_steps,
                            ig_baseline=ig_baseline, shifts=shifts, occlusion=occ, device=device)
    console.print({"pairs": {k: round(v, 4) for k, v in result.pair_scores.items()}, "tuple": result.tuple_score})
    console.print(f"explanation written: {out / 'explain.html'}")


@app.command("explain-check")
def explain_check(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or saved model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Cohort written by `medtriad synth` (manifest + annotations).")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits to score, or 'all' for a cohort the model never saw.")] = "test",
    prior_data: Annotated[Path | None, typer.Option(help="Cohort whose training masks give the location prior (default: --data).")] = None,
    tolerance: Annotated[int, typer.Option(help="Mask dilation, native pixels, for tolerant hits.")] = 8,
    query: Annotated[str, typer.Option(help="positive (the finding's sentences) or contrast (minus its negations).")] = "positive",
    shifts: Annotated[int, typer.Option(help="X-ray maps on a grid this many times finer (shift and stitch).")] = 1,
    occlusion: OcclusionOn = True,
    occlusion_window: OcclusionWindow = None,
    occlusion_stride: OcclusionStride = None,
    occlusion_fill: OcclusionFill = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder for checks.json, checks.md and pointing.png.")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first unreadable file instead of skipping it.")] = False,
) -> None:
    """Check the maps against the generator's ground truth: pointing game, ECG windows, randomisation."""
    from medtriad.explain.checks import check_explanations, to_markdown

    occ = _occlusion(occlusion, occlusion_window, occlusion_stride, occlusion_fill)
    results = check_explanations(run_dir, data, splits=[s.strip() for s in splits.split(",") if s.strip()],
                                 prior_data=prior_data, tolerance=tolerance, query=query, shifts=shifts,
                                 occlusion=occ, out=out, fail_fast=fail_fast)
    typer.echo(to_markdown(results))
    if out is not None:
        console.print(f"written: {out / 'checks.json'}, {out / 'checks.md'}, {out / 'pointing.png'}")


@app.command()
def reference(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or saved model folder.")],
    data: Annotated[Path, typer.Argument(help="The run's training data: a manifest or a shard folder.")],
    split: Annotated[str, typer.Option(help="Split whose X-rays are averaged.")] = "train",
    limit: Annotated[int, typer.Option(min=1, help="At most this many X-rays (a seeded sample).")] = 2000,
) -> None:
    """Store the reference X-ray (mean training X-ray without a finding) with a saved model."""
    from medtriad.data.dataset import open_dataset
    from medtriad.errors import DataError
    from medtriad.explain.explain import load_explain_model, model_folder
    from medtriad.explain.reference import build_reference_cxr, save_reference

    model = load_explain_model(run_dir)
    if "cxr" not in model.encoders:
        raise DataError(run_dir, "the model has no X-ray encoder")
    ds = open_dataset(data, model.config.data, split=split)
    ref = build_reference_cxr(ds, limit=limit)
    if ref.image.shape[1:] != (model.config.data.cxr.size,) * 2:
        raise DataError(data, f"its X-rays are {ref.image.shape[1:]}, the model reads {model.config.data.cxr.size} px")
    path = save_reference(ref, model_folder(run_dir))
    console.print(f"reference X-ray: mean of {ref.count} X-rays (rule {ref.rule}) -> {path}")


@app.command()
def index(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (or its model/ folder) of a trained model.")],
    data: Annotated[Path, typer.Option("--data", help="Manifest or shard folder of the studies to index.")],
    out: Annotated[Path, typer.Option("--out", help="Index folder to write (or to extend with --add).")],
    kind: Annotated[str, typer.Option(help="FAISS index: auto, flat, hnsw or ivfpq.")] = "auto",
    add: Annotated[bool, typer.Option("--add", help="Add these studies to an existing index.")] = False,
    exact_limit: Annotated[int, typer.Option(help="auto: exact search up to this many vectors.")] = 100_000,
    batch_size: Annotated[int, typer.Option(help="Studies embedded per batch.")] = 64,
    workers: Annotated[int, typer.Option(help="Loader worker processes.")] = 0,
) -> None:
    """Embed every study and build a FAISS index per modality for retrieval."""
    from medtriad.index import build_index

    build_index(run_dir, data, out, kind=kind, add=add, exact_limit=exact_limit, batch_size=batch_size, workers=workers)
    console.print(f"index ready: {out}")


@app.command()
def serve(
    index_dir: Annotated[Path, typer.Argument(help="Index folder written by `medtriad index`.")],
    host: Annotated[str, typer.Option(help="Address to bind; a non-loopback address needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token: Annotated[str | None, typer.Option(help="Bearer token clients must send.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, MB.")] = 20.0,
    timeout: Annotated[float, typer.Option(help="Per-request time limit, seconds.")] = 60.0,
) -> None:
    """Serve search over an index: a JSON API and a web page."""
    from medtriad.serve import serve as run_server

    run_server(index_dir, host, port, token, max_upload_mb=max_upload_mb, timeout_s=timeout)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_out"),
    n: Annotated[int, typer.Option("--n", help="Studies in the demo cohort.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    config: Annotated[Path | None, typer.Option(help="Config (default: configs/demo.yaml).")] = None,
    overrides: SetOption = [],  # noqa: B006 - typer reads the default
) -> None:
    """Run the main job on the built-in demo cohort, resuming any step already done."""
    from rich.table import Table

    from medtriad.demo import run_demo

    result = run_demo(out, n=n, seed=seed, workers=workers, config=config, overrides=overrides)
    table = Table(title=f"demo: {result.out}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in result.timings.items():
        table.add_row(step, f"{seconds:.1f}")
    console.print(table)
    counts = result.summary.get("counts", {}).get("all", {})
    console.print(f"cohort: {counts} -> {result.manifest}")
    rt = Table(title="held-out retrieval (test split)")
    for col in ("query -> gallery", "n", "R@1", "R@5", "R@10", "chance R@5", "R@5 / chance"):
        rt.add_column(col, justify="left" if col.startswith("query") else "right")
    for pair, r in result.retrieval.items():
        rt.add_row(pair, f"{r['n']:.0f}", f"{r['R@1']:.3f}", f"{r['R@5']:.3f}", f"{r['R@10']:.3f}",
                   f"{r['chance_R@5']:.3f}", f"{r['R@5'] / r['chance_R@5']:.1f}x")
    console.print(rt)
    if result.zeroshot:
        zt = Table(title="zero-shot macro AUROC (test split)")
        zt.add_column("label set")
        zt.add_column("AUROC", justify="right")
        for name, value in result.zeroshot.items():
            zt.add_row(name, f"{value:.3f}")
        console.print(zt)
    console.print(f"summary: {result.out / 'demo_summary.json'}; training curves: {result.out / 'run' / 'curves.png'}")
    if result.report_html:
        console.print(f"evaluation report: {result.report_html}")
    if result.explain_html:
        console.print(f"explanation of a held-out study: {result.explain_html}")
    if result.checks:
        pt = Table(title="pointing game (test split): map maximum inside the finding's region (95% intervals: checks.md)")
        for col in ("finding", "n", "occlusion", "relevance", "similarity", "random", "prior"):
            pt.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)

        def rate(r: dict, method: str) -> str:
            return f"{r[method]['rate']:.2f}" if method in r else "-"

        for finding, r in result.checks.items():
            if finding == "randomisation_spearman":
                continue
            pt.add_row(finding, str(r["n"]), rate(r, "occlusion"), rate(r, "relevance"), rate(r, "similarity"),
                       f"{r['random']:.2f}", f"{r['prior']:.2f}")
        console.print(pt)
        console.print(f"explanation checks: {result.out / 'explain' / 'checks' / 'checks.md'} and pointing.png")


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
