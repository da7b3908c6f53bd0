"""`bastion serve` and `bastion apikey create`: the guarded inference server and its keys.

Both map options onto :mod:`bastion.serve`; errors propagate to ``bastion.cli.main.main``
(exit 2 for bad options or a missing key file, 1 when the model fails its checks).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bastion.core.errors import ConfigurationError

_out = Console(highlight=False, soft_wrap=True, markup=False)
_err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

apikey_app = typer.Typer(
    name="apikey",
    help="Manage the API keys `bastion serve` accepts.",
    no_args_is_help=True,
    add_completion=False,
)

_KEYS_HELP = "Key file (JSON of SHA-256 digests, mode 0600)."


def _install_hint() -> ConfigurationError:
    return ConfigurationError(
        "bastion serve needs the 'serve' extra: pip install 'bastion[serve]' "
        "(fastapi, uvicorn, prometheus-client)"
    )


@apikey_app.command("create")
def apikey_create(
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE", help=_KEYS_HELP)] = Path(
        "bastion-keys.json"
    ),
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Who holds the key.")] = "",
) -> None:
    """Create an API key: prints it once; only its SHA-256 digest is stored in FILE.

    Example: bastion apikey create --keys bastion-keys.json --name ci
    """
    from bastion.serve.auth import create_key

    if not name:
        raise ConfigurationError("--name is required (who will hold the key)")
    key = create_key(keys, name)
    _err.print(f"added key {name!r} to {keys}; it is shown once, store it now:")
    _out.print(key)


def _check_host(host: str, port: int) -> None:
    """Resolve ``--host`` before any work, so a typo fails here and not after "serving ..."."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"--host {host!r} is not an address or a name this machine resolves: {reason}"
        ) from None


def serve(
    model: Annotated[
        str, typer.Option("--model", metavar="MODEL", help="'demo' or package.module:factory.")
    ] = "demo",
    weights: Annotated[
        Path | None,
        typer.Option("--weights", metavar="FILE", help="Weights, read by bastion.load."),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option("--schema", metavar="FILE", help="Input schema (.toml/.json); default: "
                     "inferred from the reference data."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", metavar="DATA", help="Reference inputs (.npz with array x) "
                     "for the monitors; default: the bundled MNIST 5k test split."),
    ] = None,
    keys: Annotated[Path, typer.Option("--keys", metavar="FILE", help=_KEYS_HELP)] = Path(
        "bastion-keys.json"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    policy: Annotated[
        str, typer.Option("--policy", help="Invalid input: reject, repair or substitute.")
    ] = "reject",
    signature: Annotated[
        Path | None, typer.Option("--signature", metavar="SIG", help="Signature of --weights.")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", metavar="PUBLIC.pem|KEYDIR", help="Trusted public key(s)."),
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected SHA-256 of --weights.")
    ] = None,
    audit_log: Annotated[
        str, typer.Option("--audit-log", metavar="PATH|URL", help="SQLite file or PostgreSQL URL.")
    ] = "bastion-audit.db",
    audit_sync: Annotated[
        str,
        typer.Option("--audit-sync", metavar="normal|full", help="SQLite audit durability. "
                     "normal (default): every acknowledged request is written to the OS before "
                     "it is answered and survives the server being killed (kill -9, OOM, crash); "
                     "an OS crash or power loss may lose the last ones. full: also fsync each "
                     "commit, so they survive power loss (costs an fsync per commit, 0.2-4 ms on "
                     "a busy disk). Ignored for PostgreSQL."),
    ] = "normal",
    max_body: Annotated[int, typer.Option("--max-body", help="Largest body in bytes.")] = 4 << 20,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most samples a request.")] = 256,
    rate: Annotated[float, typer.Option("--rate", help="Requests/s per key.")] = 50.0,
    burst: Annotated[int, typer.Option("--burst", help="Burst size per key.")] = 100,
    timeout: Annotated[float, typer.Option("--timeout", help="Inference timeout (s).")] = 10.0,
    public_docs: Annotated[
        bool, typer.Option("--public-docs", help="Serve /docs and /openapi.json without a key.")
    ] = False,
    alerts: Annotated[
        Path | None,
        typer.Option("--alerts", metavar="FILE", help="Alert rules and sinks (.toml/.json); "
                     "default: alert when any monitor alarms (log and /metrics)."),
    ] = None,
) -> None:
    """Serve a model behind the runtime guard (API keys, limits, schema, monitors, alerts,
    audit log).

    Example: bastion apikey create --name me && bastion serve --model demo
    """
    try:
        import uvicorn

        from bastion.serve import ServeConfig, assemble, create_app
        from bastion.serve._stages import default_monitor_suite
        from bastion.serve.auth import KeyStore
        from bastion.serve.metrics import ServerMetrics
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise _install_hint() from exc
    from bastion.guard import AlertConfig

    config = ServeConfig(host=host, port=port, max_body_bytes=max_body, max_batch=max_batch,
                         rate_per_second=rate, burst=burst, timeout_seconds=timeout)
    _check_host(host, port)
    store = KeyStore.load(keys)
    if not store.keys:
        raise ConfigurationError(
            f"key file {keys} holds no key; run `bastion apikey create --keys {keys} --name NAME`"
        )
    alert_config = AlertConfig() if alerts is None else AlertConfig.load(alerts)
    alert_config.check_monitors(m.name for m in default_monitor_suite().monitors)
    metrics = ServerMetrics()
    manager = alert_config.build(metrics.registry)  # alerts on the registry /metrics serves
    pipeline = assemble(
        model=model, weights=weights, schema=schema, reference=reference, policy=policy,
        signature=signature, public_keys=key, sha256=sha256, audit_log=audit_log,
        audit_sync=audit_sync, alerts=manager,
    )
    app = create_app(pipeline, store, config, metrics=metrics, public_docs=public_docs)
    rules = ", ".join(r.name for r in alert_config.rules)
    _err.print(f"serving {pipeline.name} on http://{host}:{port} ({len(store.keys)} key(s); "
               f"alert rules: {rules})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
