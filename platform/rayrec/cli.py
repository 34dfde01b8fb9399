"""The `rayrec` command line: one subcommand per stage, and `run` chaining them.

Every stage works the same on a laptop and under `ray job submit` (see ``runtime.init_ray``).
Errors a user can fix are printed as one clear message with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from rayrec.config import ConfigError, RayrecConfig, load_config

if TYPE_CHECKING:
    from rayrec.loadtest.runner import LoadtestReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rayrec: logs in, recommendations out.")
# Tables stay readable when output goes to a log file or CI (no terminal to take the width from).
console = Console(width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value (repeatable).")]
SMOKE_OVERRIDES = ["generate.scale=tiny", "preprocess.min_user_events=2", "preprocess.min_item_events=2",
                   "train.epochs=1", "train.ranker_epochs=1", "train.batch_size=128", "tune.num_samples=2",
                   "tune.eval_users=200"]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from rayrec.data.preprocess import PreprocessError
    from rayrec.data.sources import SourceFileError

    from rayrec.artifacts import ArtifactError
    from rayrec.loadtest.runner import LoadtestError
    from rayrec.serve.launch import ServeStartError

    return (ConfigError, PreprocessError, SourceFileError, FileNotFoundError, ArtifactError, ServeStartError,
            LoadtestError)


def _unwrap(error: BaseException) -> BaseException:
    """The user-facing cause of an error that crossed a Ray task boundary."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


@contextmanager
def _user_facing_errors() -> Iterator[None]:
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - decided below: user error or bug
        cause = _unwrap(e)
        if isinstance(cause, _user_errors()):
            raise _fail(str(cause)) from None
        raise


def _config(config: Path | None, overrides: list[str] | None) -> RayrecConfig:
    with _user_facing_errors():
        return load_config(config, overrides or [])


@contextmanager
def _stages(title: str) -> Iterator[Callable[[str], None]]:
    """A rich progress line per stage: the callback marks the previous stage done."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        current: list[int] = []

        def on_stage(name: str) -> None:
            if current:
                progress.update(current[-1], completed=1, total=1)
            current.append(progress.add_task(f"{title}: {name}", total=None))

        yield on_stage
        if current:
            progress.update(current[-1], completed=1, total=1)


@app.command()
def generate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    scale: Annotated[Optional[str], typer.Option(help="tiny | small | demo | large")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (catalog.csv, events/).")] = None,
) -> None:
    """Write the deterministic synthetic e-commerce dataset (catalog + event log with bad rows)."""
    extra = [f"generate.scale={scale}"] * bool(scale) + [f"generate.seed={seed}"] * (seed is not None)
    extra += [f"generate.out_dir={out}"] * bool(out)
    cfg = _config(config, [*(set_ or []), *extra])
    _run_generate(cfg)


def _run_generate(cfg: RayrecConfig) -> None:
    from rayrec.data.synthetic import generate as generate_data

    if cfg.generate is None:
        raise _fail("this config has no `generate` section (it reads a real dataset)")
    g = cfg.generate
    with Progress(TextColumn("generate"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("generate", total=None)
        summary = generate_data(g.out_dir, scale=g.scale, seed=g.seed,
                                progress=lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"[green]generated[/] {summary.n_events:,} events, {summary.n_items:,} items, "
                  f"{summary.n_users:,} users in {summary.out_dir} "
                  f"({sum(summary.bad_rows.values()):,} deliberately bad rows)")


@app.command()
def preprocess(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate, dedupe, k-core filter, split and build training examples with Ray Data."""
    cfg = _config(config, set_)
    manifest = _run_preprocess(cfg)
    print_preprocess_summary(manifest)


def _run_preprocess(cfg: RayrecConfig) -> dict[str, Any]:
    from rayrec.data.preprocess import run_preprocess
    from rayrec.runtime import init_ray

    with _user_facing_errors():
        init_ray(cfg.ray)
        with _stages("preprocess") as on_stage:
            return run_preprocess(cfg, on_stage)


def print_preprocess_summary(manifest: dict[str, Any]) -> None:
    c = manifest["counts"]
    table = Table(title="preprocess: where every row went", show_header=True)
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, key in [("read", "rows_read"), ("rejected (rejects/)", "rejected"),
                       ("exact duplicates (duplicates/)", "duplicates"), ("k-core filtered", "filtered_kcore"),
                       ("kept", "kept")]:
        table.add_row(label, f"{c[key]:,}")
    table.add_row("adds up", "[green]yes[/]" if c["adds_up"] else "[red]NO[/]")
    console.print(table)
    if c["rejected_by_reason"]:
        reasons = Table(title="rejected rows by reason")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for reason, n in sorted(c["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            reasons.add_row(reason, f"{n:,}")
        console.print(reasons)
    outputs = Table(title="training data")
    outputs.add_column("output")
    for split in ("train", "valid", "test"):
        outputs.add_column(split, justify="right")
    for name, splits in manifest["outputs"].items():
        outputs.add_row(name, *(f"{splits[s]:,}" for s in ("train", "valid", "test")))
    console.print(outputs)
    console.print("vocabularies: " + ", ".join(f"{k} {v:,}" for k, v in manifest["vocab_sizes"].items()))
    for split, (lo, hi) in manifest["time_ranges"].items():
        console.print(f"  {split:5s} {lo} .. {hi}")
    for bad in manifest["source"]["bad_files"]:
        console.print(f"[yellow]skipped bad file[/] {bad['path']}: {bad['error']}")


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str, typer.Option(help="two_tower | ranker | all")] = "all",
) -> None:
    """Train the retrieval model and the ranker with Ray Train (DDP, checkpoints, resume on failure)."""
    cfg = _config(config, set_)
    _run_training(cfg, model)


def _run_training(cfg: RayrecConfig, which: str = "all") -> None:
    from pathlib import Path as _Path

    from rayrec.runtime import init_ray
    from rayrec.train.trainer import load_context, run_training

    if which not in ("all", "two_tower", "ranker"):
        raise _fail(f"--model must be two_tower, ranker or all, not {which!r}")
    with _user_facing_errors():
        init_ray(cfg.ray)
        ctx = load_context(cfg)
        retrieval_dir = _Path(cfg.train.out_dir) / "two_tower"
        for kind in ("two_tower", "ranker"):
            if which not in ("all", kind):
                continue
            console.print(f"[bold]training {kind}[/] with {cfg.train.num_workers} Ray Train worker(s)")
            result = run_training(cfg, kind, ctx, retrieval_dir=retrieval_dir.resolve())
            last = result.metrics[-1]
            shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch")
            console.print(f"  {kind}: {len(result.metrics)} epochs; last: {shown}")
            _print_boosts(result.bundle)
            console.print(f"  bundle {result.bundle}, curves {result.curves_png}")


def _print_boosts(bundle: Path) -> None:
    from rayrec.artifacts import read_meta
    from rayrec.train.systems import BOOST_GRIDS

    meta = read_meta(bundle)
    for name in BOOST_GRIDS:
        fit = meta.get(f"{name}_fit")
        if fit:
            grid = ", ".join(f"{b}: {m['valid_ndcg@20']:.4f}" for b, m in fit.items())
            console.print(f"  {name.replace('_', ' ')} {meta['spec'][name]:g}, the smallest within one standard "
                          f"error of the best valid NDCG@20 ({grid})")


@app.command()
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="test | valid")] = "test",
    task: Annotated[str, typer.Option(help="recommend: the models and baselines; search: lexical, semantic, "
                                      "fused and personalized search over the latest release")] = "recommend",
) -> None:
    """Full-ranking evaluation on the temporal split: recommendations (models and baselines) or search."""
    if split not in ("test", "valid"):
        raise _fail(f"--split must be test or valid; got {split!r}")
    if task not in ("recommend", "search"):
        raise _fail(f"--task must be recommend or search; got {task!r}")
    cfg = _config(config, set_)
    if task == "search":
        _run_search_evaluation(cfg, split)
    else:
        _run_evaluation(cfg, split)


def _metrics_table(title: str, table: Any, columns: list[str]) -> Table:
    out = Table(title=title)
    out.add_column("system")
    for c in columns:
        out.add_column(c, justify="right")
    for _, row in table.iterrows():
        out.add_row(str(row["system"]), *(f"{row[c]:.4f}" for c in columns))
    return out


def _run_search_evaluation(cfg: RayrecConfig, split: str = "test") -> None:
    from rayrec.index.search_eval import SEARCH_KS, run_search_evaluation

    with _user_facing_errors(), console.status("evaluating search"):
        table, info = run_search_evaluation(cfg, split)
    columns = [f"recall@{k}" for k in SEARCH_KS] + [f"ndcg@{k}" for k in SEARCH_KS] + ["mrr"]
    console.print(_metrics_table(f"search evaluation ({split}, {info['queries']:,} queries, full ranking)",
                                 table, columns))
    console.print(f"report: {info['paths']['markdown']} (+ .json, .png)")


def _run_evaluation(cfg: RayrecConfig, split: str = "test") -> None:
    from rayrec.train.offline import run_evaluation
    from rayrec.train.trainer import load_context

    with _user_facing_errors():
        table, info = run_evaluation(cfg, load_context(cfg, with_valid=False), split)
    ks = [k for k in cfg.evaluate.ks if k in (10, 20, 50)] or cfg.evaluate.ks[:2]
    columns = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr", f"coverage@{ks[-1]}"]
    columns += [c for c in table.columns if c.endswith("history)")]  # users with / without history
    console.print(_metrics_table(f"offline evaluation ({split}, {info['users']:,} users, full ranking)", table,
                                 columns))
    console.print(f"report: {info['paths']['markdown']} (+ .json, .png)")


@app.command("tune-search")
def tune_search(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="valid | train: the search events the weights are learned from")]
    = "valid",
) -> None:
    """Learn search's fusion and personalization weights from the logged search events (grid search,
    NDCG@10); writes a config with them for serve and evaluate --task search."""
    from rayrec.index.search_tune import GRID, tune_search_blend

    if split not in ("valid", "train"):
        raise _fail(f"--split must be valid or train (test stays for evaluation); got {split!r}")
    cfg = _config(config, set_)
    with _user_facing_errors(), console.status("scoring every search event's candidates once, then the grid"):
        table, chosen, info = tune_search_blend(cfg, split)
    out = Table(title=f"search weights: best of {len(table)} on {info['queries']:,} {split} searches "
                f"(configured: NDCG@10 {info['current']:.4f})")
    for c in (*GRID, "ndcg@10"):
        out.add_column(c, justify="right")
    for _, row in table.head(5).iterrows():
        out.add_row(*(f"{row[c]:g}" for c in GRID), f"{row['ndcg@10']:.4f}")
    console.print(out)
    console.print(f"config with the best weights: {info['paths']['config']} (every point: {info['paths']['markdown']})")


@app.command()
def compress(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Shrink, prune, fine-tune and (optionally) int8-quantize the trained ranker; dense vs compressed."""
    cfg = _config(config, set_)
    _run_compression(cfg)


def _run_compression(cfg: RayrecConfig) -> dict[str, Any]:
    from rayrec.compress.pipeline import run_compression
    from rayrec.runtime import init_ray
    from rayrec.train.trainer import load_context

    c = cfg.compress
    console.print(f"[bold]compressing the ranker[/]: deep {c.deep:.0%}, cross rank {c.cross_rank:.0%}, "
                  f"embedding dim {c.embedding_dim:.0%} (structured), sparsity {c.sparsity:.0%} (unstructured), "
                  f"int8 {'on' if c.quantize else 'off'}, {c.finetune_epochs} fine-tuning epoch(s)")
    with _user_facing_errors():
        init_ray(cfg.ray)
        result = run_compression(load_context(cfg), Path(cfg.train.out_dir))
    out = Table(title="ranker: dense vs compressed (validation, CPU scoring with 1 thread)")
    for col in ("model", "ndcg@20", "recall@20", "p50 ms", "p99 ms", "size MB", "parameters", "nonzero"):
        out.add_column(col, justify="left" if col == "model" else "right")
    for name in ("dense", "compressed"):
        m = result[name]
        out.add_row(name, f"{m['valid_ndcg@20']:.4f}", f"{m['valid_recall@20']:.4f}", f"{m['p50_ms']:.2f}",
                    f"{m['p99_ms']:.2f}", f"{m['size_bytes'] / 1e6:.2f}", f"{m['parameters']:,.0f}",
                    f"{m['nonzero_parameters']:,.0f}")
    console.print(out)
    console.print(f"bundle: {result['bundle']}")
    return result


@app.command()
def tune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the experiment in tune.out_dir.")] = False,
) -> None:
    """Ray Tune over training and compression settings: Pareto front, report, chosen config."""
    cfg = _config(config, set_)
    _run_tune(cfg, resume)


def _run_tune(cfg: RayrecConfig, resume: bool = False) -> None:
    from rayrec.runtime import init_ray
    from rayrec.tune.runner import run_tune

    t = cfg.tune
    console.print(f"[bold]tuning[/] {len(t.space)} dimension(s), {t.num_samples} trials, {t.max_concurrent} at once, "
                  f"{t.epochs} ranker epoch(s) each + compression")
    with _user_facing_errors():
        init_ray(cfg.ray)
        with console.status("running trials (Ray Tune + Optuna TPE, ASHA)"):
            outcome = run_tune(cfg, resume)
    out = Table(title="Pareto front (validation NDCG@20 vs p99 ranker latency)")
    for col in ("trial", "ndcg@20", "p99 ms", "size KB", "settings"):
        out.add_column(col, justify="left" if col in ("trial", "settings") else "right")
    for r in outcome.front:
        out.add_row(r.trial + (" ★" if r is outcome.chosen else ""), f"{r.value('valid_ndcg@20'):.4f}",
                    f"{r.value('p99_ms'):.2f}", f"{r.value('size_bytes') / 1024:.0f}",
                    ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items()))
    console.print(out)
    if not outcome.within_budget:
        console.print("[yellow]no trial met the latency/size budgets; chose the best completed trial[/]")
    console.print(f"report {outcome.report_md}, plot {outcome.pareto_png}, chosen config {outcome.chosen_yaml}")


@app.command("build-index")
def build_index(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Item embeddings → FAISS index, packaged with the models as the next serving release."""
    _run_build_index(_config(config, set_))


def _run_build_index(cfg: RayrecConfig) -> Path:
    from rayrec.index.build import build_release
    from rayrec.release import read_manifest

    with _user_facing_errors(), _stages("build-index") as on_stage:
        release = build_release(cfg, on_stage)
    built = read_manifest(release)
    manifest = built.index
    console.print(f"release [bold]{release.name}[/] in {release}: {manifest['kind']} index over "
                  f"{manifest['n_indexed']:,} items, recall@{manifest['recall_k']} {manifest['recall_at_k']:.3f} vs "
                  f"exact, {manifest['qps']:,.0f} queries/s ({manifest['qps'] / manifest['exact_qps']:.1f}× exact)")
    search = built.search
    if search:
        semantic = search["semantic"]
        console.print(f"search: lexical ({search['lexical']['engine']}, {search['lexical']['docs']:,} items)"
                      + (f" + semantic ({semantic['model']}, {semantic['index']} index)" if semantic else ""))
    return release


@app.command()
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Release to serve (default: latest).")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Exit after the sample requests.")] = False,
) -> None:
    """Start the Ray Serve application, send sample requests, keep serving until interrupted."""
    _run_serving(_config(config, set_), version, keep_serving=not smoke)


def _run_serving(cfg: RayrecConfig, version: str | None = None, keep_serving: bool = True) -> None:
    import time

    import pyarrow.parquet as pq

    from rayrec.release import ReleaseLayout, release_root, resolve_release
    from rayrec.runtime import init_ray
    from rich.markup import escape

    from rayrec.serve.launch import sample_requests, start_serving

    with _user_facing_errors():
        release = resolve_release(release_root(cfg), version or cfg.serve.version)
        init_ray(cfg.ray)
        with console.status(f"starting Ray Serve (release {release.name})"):
            base = start_serving(cfg, release.name)
    layout = ReleaseLayout(release)
    histories = pq.read_table(layout.histories).slice(0, 1).to_pylist()
    user = histories[0]["user_id"] if histories else "demo-user"
    items = pq.read_table(layout.items, columns=["item_id", "title", "category"]).to_pylist()
    top = items[0]["category"].split(" > ")[0]
    clicked = [it["item_id"] for it in items if it["category"].startswith(top)][:3]
    query = str(items[0]["category"]).split(" > ")[-1].lower()  # a leaf category: several items match
    for label, status, answer in sample_requests(base, user, clicked, query=query):
        console.print(f"[bold]{label}[/] → {status}")
        items = answer.get("items") if isinstance(answer, dict) else None
        if items is not None:
            for it in items:
                console.print(f"   {escape(str(it['item_id'])):>10}  {it['score']:.3f}  {escape(str(it.get('title')))}  "
                              f"[dim]{escape(str(it.get('category')))}[/]")
            extra = {k: answer[k] for k in ("version", "cold_start", "reranked", "personalized", "reason", "took_ms")
                     if k in answer}
            console.print(f"   [dim]{extra}[/]")
        else:
            console.print(f"   {escape(str(answer))}")
    console.print(f"[bold green]serving[/] {base}  (API docs {base}/docs, ready {base}/readyz)")
    console.print(f"[bold green]storefront[/] {base}/  (search, recommendations, similar items in a browser)")
    if keep_serving:
        import signal

        # `ray job stop`, `docker stop` and systemd send SIGTERM: shut Serve down as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        console.print("press Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve as ray_serve

            console.print("stopping Serve")
            ray_serve.shutdown()


@app.command()
def loadtest(
    url: Annotated[str, typer.Option(help="Serving base URL, route prefix included.")] = "http://127.0.0.1:8000",
    rate: Annotated[Optional[float], typer.Option(help="Fixed request rate (requests/s, open loop).")] = None,
    users: Annotated[Optional[int], typer.Option(help="Fixed concurrency: users sending back to back.")] = None,
    max_concurrency: Annotated[int, typer.Option(help="With --rate: simulated users holding the rate; "
                                                 "rate × latency beyond this saturates the generator.")] = 64,
    warmup: Annotated[int, typer.Option(help="Seconds sent but left out of the numbers.")] = 10,
    duration: Annotated[int, typer.Option(help="Seconds measured after the warm-up.")] = 60,
    k: Annotated[int, typer.Option(help="Items asked for per request.")] = 10,
    users_pool: Annotated[int, typer.Option(help="Known user ids U000001..U<pool>.")] = 1000,
    unknown_fraction: Annotated[float, typer.Option(help="Share of requests for unknown users.")] = 0.0,
    similar_fraction: Annotated[float, typer.Option(help="Share of similar-item requests.")] = 0.0,
    items_file: Annotated[Optional[Path], typer.Option(help="Item ids for similar-item requests, one a line.")]
    = None,
    search_fraction: Annotated[float, typer.Option(help="Share of search requests.")] = 0.0,
    queries_file: Annotated[Optional[Path], typer.Option(help="Search queries, one a line.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/loadtest/<timestamp>/).")] = None,
    replicas_every: Annotated[float, typer.Option(help="Seconds between Serve replica-count polls.")] = 2.0,
    app_name: Annotated[str, typer.Option("--app", help="Serve application whose replicas are counted.")]
    = "rayrec",
    ray_address: Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", help="Ray to read replica counts "
                                                        "from, e.g. ray://<head>:10001.")] = None,
) -> None:
    """Load the serving app with Locust at a fixed rate or concurrency: latency, throughput, errors and
    replicas over time, as JSON and PNG."""
    from rich.markup import escape

    from rayrec.loadtest.contract import RequestMix
    from rayrec.loadtest.runner import LoadtestSettings, default_out_dir, run_loadtest

    with _user_facing_errors():
        settings = LoadtestSettings(
            url=url, rate=rate, users=users, max_concurrency=max_concurrency, warmup_s=warmup, duration_s=duration,
            mix=RequestMix(users_pool=users_pool, unknown_fraction=unknown_fraction, k=k,
                           similar_fraction=similar_fraction, items_file=items_file,
                           search_fraction=search_fraction, queries_file=queries_file),
            replicas_every_s=replicas_every, app_name=app_name, ray_address=ray_address)
        out_dir = out or default_out_dir()
        load = f"{rate:g} requests/s" if rate is not None else f"{users} users"
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed:.0f}/{task.total:.0f} s"), console=console,
                      transient=True) as progress:
            task = progress.add_task(f"loadtest {escape(settings.base_url)}: {load}", total=settings.run_time_s)
            report = run_loadtest(settings, out_dir,
                                  on_tick=lambda done, total: progress.update(task, completed=min(done, total)))
    print_loadtest_summary(report)
    console.print(f"report {out_dir / 'report.json'}, plot {out_dir / 'report.png'}, "
                  f"every request in {out_dir / 'records'}")


def print_loadtest_summary(report: LoadtestReport) -> None:
    table = Table(title=f"loadtest {report.url} ({report.measured_s:g} s measured after {report.warmup_s} s warm-up)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    target = f" (target {report.target_rate:g})" if report.target_rate is not None else ""
    rows = [("load", f"{report.target_rate:g} req/s, {report.users} users max" if report.target_rate is not None
             else f"{report.users} users"),
            ("requests sent (measured)", f"{report.requests_sent:,} ({report.requests_measured:,})"),
            ("sent/s", f"{report.sent_per_s:,.1f}"), (f"200 answers/s{target}", f"{report.throughput_per_s:,.1f}")]
    if report.latency is not None:
        rows += [(f"{name} ms", f"{getattr(report.latency, f'{name}_ms'):,.1f}") for name in ("p50", "p95", "p99",
                                                                                              "max")]
    rows += [(f"errors {status}", f"{n:,}") for status, n in report.errors_by_status.items()]
    if report.replicas:
        last = report.replicas[-1].running
        rows += [(f"{name} replicas (min..max, last)",
                  f"{min(s.running.get(name, 0) for s in report.replicas)}.."
                  f"{max(s.running.get(name, 0) for s in report.replicas)}, {last.get(name, 0)}") for name in last]
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    if report.saturated:
        console.print(f"[bold yellow]saturated:[/] {report.saturation_note}")
    if report.replicas is None or report.replicas_note:
        console.print(f"[dim]replicas: {report.replicas_note}[/]")


@app.command()
def run(
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Tiny data, exits quickly (CI and a first look).")] = False,
    with_tune: Annotated[bool, typer.Option("--tune", help="Also compress the ranker and run the config's "
                                            "small Ray Tune search (minutes more).")] = False,
    with_serving: Annotated[bool, typer.Option("--serve/--no-serve", help="Build the index and start Ray Serve "
                                               "with sample requests (kept running unless --smoke).")] = True,
) -> None:
    """The main job end to end: generate (synthetic configs) → preprocess → train → evaluate
    [→ compress → tune] → build-index → evaluate search → serve."""
    cfg = _config(config, [*(SMOKE_OVERRIDES if smoke else []), *(set_ or [])])
    if cfg.generate is not None:
        _run_generate(cfg)
    manifest = _run_preprocess(cfg)
    print_preprocess_summary(manifest)
    _run_training(cfg)
    _run_evaluation(cfg)
    if with_tune:
        _run_compression(cfg)
        _run_tune(cfg)
    console.print(f"[bold green]done[/]: data in {cfg.preprocess.out_dir}, models and report in {cfg.train.out_dir}")
    if with_serving:
        _run_build_index(cfg)
        if cfg.search.enabled and not smoke:  # tiny data has too few search events to say anything
            from rayrec.index.search_eval import has_search_events

            if has_search_events(Path(cfg.preprocess.out_dir), "test"):
                _run_search_evaluation(cfg)
            else:
                console.print("search evaluation skipped: the log has no test-period search followed by a click "
                              "(search is still served)")
        _run_serving(cfg, keep_serving=not smoke)


@app.command("api-key")
def api_key(
    file: Annotated[Path, typer.Option(help="Key file Serve reads (serve.auth.keys_file); keep it out of the repo.")],
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. storefront.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read (recommend, similar, search), write (events).")]
    = "read",
    rate: Annotated[Optional[float], typer.Option(help="This key's requests/s per replica (default serve.auth.rate_per_s).")]
    = None,
) -> None:
    """Make an API key: its SHA-256 goes into FILE, the key is printed once and stored nowhere."""
    from rayrec.serve.auth import SCOPES, AuthSetupError, add_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if not wanted or unknown:
        raise _fail(f"--scopes must list {', '.join(SCOPES)}; got {scopes!r}")
    try:
        key = add_key(file, name, wanted, rate)  # type: ignore[arg-type]
    except AuthSetupError as e:
        raise _fail(str(e)) from None
    console.print(f"key for {name!r} ({', '.join(wanted)}), added to {file}; it is not stored anywhere, copy it now:")
    print(key)


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration (every key, type and description)."""
    sys.stdout.write(json.dumps(RayrecConfig.model_json_schema(by_alias=True), indent=2) + "\n")


@app.command("show-config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration after defaults and overrides."""
    import yaml

    cfg = _config(config, set_)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))


if __name__ == "__main__":
    app()
