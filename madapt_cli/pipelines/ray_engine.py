"""`--engine ray`: running madapt's own per-batch functions on Ray Data.

What is shared by ``embed``, ``apply``, ``import`` (and the tests): the options, connecting
to (or starting) a Ray cluster without hanging, handing Ray Data fragments to read or rows in
bounded waves, and turning an error raised inside a Ray worker back into madapt's one-line
error.

The division of labour, the same for every command:

* the driver (this process) validates everything with the local engine's code before any
  work is dispatched and drops the rows already stored (by content key);
* who reads the source: for ``apply`` (a store's table) and ``import`` (a Parquet or Lance
  SOURCE) the driver lists it in fragments, a few bytes each (a Parquet row group, a Lance
  range: :mod:`madapt_cli.store.fragments`), and each worker reads its own
  (:func:`run_fragments`), so the actors start at once and the driver ships no rows; texts
  to embed, JSONL and ``.npy`` sources are read in order by the driver through madapt's own
  readers (one implementation of parsing, supersession and validation) and handed to Ray in
  bounded waves (:func:`run_waves`);
* Ray Data runs the per-batch function in an actor pool (``map_batches`` with
  ``compute=ActorPoolStrategy``), each actor holding the model, the API client or the
  adaptor, once;
* the results come back to the driver and land in the store through the store layer
  (:meth:`Store.append` / :meth:`Store.write_table`): the schema and its metadata, the write
  lock and atomic publication stay those of the local engine. Ray's own Parquet/Lance sinks
  are not used: they name and lay out files their own way (madapt's Parquet tables are
  ``base-/part-NNNNNNNN.parquet`` files where a later file supersedes an earlier one), do not
  take the store's lock, and publish file by file rather than atomically.

Exactly-once: an actor that dies is restarted and its task retried (Ray Data's actor pools
run with ``max_restarts=-1, max_task_retries=-1``). A task's outputs reach the driver in
order and each once: a block task's output only when it finished, a fragment task's blocks
as its generator yields them, and a retried fragment yields the same blocks again, of which
Ray's streaming generator hands on only those not yet delivered (tests/test_ray.py kills an
actor mid-fragment). So a killed worker neither loses nor duplicates a row; a killed driver
leaves only what it had stored, and a rerun filters it out.

Ray is imported lazily: the CLI starts without it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from madapt_cli.errors import EnvironmentFailure, InputError, MadaptError

ENGINES = ("local", "ray")

#: seconds to wait for a TCP answer from --ray-address before giving up
CONNECT_TIMEOUT = 5.0

_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")

INSTALL_HINT = 'pip install "madapt[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    ``address``: None starts a local Ray for the run (and stops it after); ``"auto"`` joins
    the cluster this machine belongs to (``ray start``); ``HOST:PORT`` a cluster's GCS and
    ``ray://HOST:10001`` its Ray Client server. ``workers``: actors in the pool (each holds
    one model or adaptor); ``gpus_per_worker``: GPUs each actor reserves (fractions share
    one); ``batch_rows``: rows per block, one ``map_batches`` call (None: the command's
    default); ``wave_rows``: rows handed to Ray at once, which bounds what the object store
    holds; ``num_cpus``: CPUs of a local Ray."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_rows: int | None = None
    wave_rows: int = 1_000_000
    num_cpus: int | None = None

    def check(self) -> None:
        """Refuse bad options (exit 2, one line) before anything is read or started."""
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be at least 1")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: must be 0 or more")
        if (self.batch_rows is not None and self.batch_rows < 1) or self.wave_rows < 1:
            raise InputError("the rows per batch and per wave must be at least 1")
        if self.address not in (None, "auto") and not _ADDRESS.match(self.address):
            raise InputError(
                f"--ray-address {self.address!r}: use auto, HOST:PORT or ray://HOST:10001"
            )


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"--engine must be local or ray, not {engine!r}")


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it (exit 2)."""
    try:
        import ray
        import ray.data  # the part madapt uses
    except ImportError:
        raise InputError(f"--engine ray needs Ray: {INSTALL_HINT}") from None
    return ray


def _probe(address: str) -> None:
    """Fail fast (exit 4) when nothing answers at ``address``: ``ray.init`` itself retries
    an unreachable GCS for minutes."""
    match = _ADDRESS.match(address)
    assert match is not None  # RayOptions.check
    host, port = match.group("host").strip("[]"), int(match.group("port"))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise EnvironmentFailure(
            f"--ray-address {address}: no Ray cluster answers at {host}:{port} ({reason}); "
            "start one with `ray start --head` or check the address"
        ) from None


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Connected to Ray for the ``with`` block: the Ray of this process when one is already
    initialised (a test suite's, a notebook's), else the cluster at ``options.address``, else
    a local Ray started here and stopped after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if options.address not in (None, "auto"):
        if options.address.startswith("ray://"):
            try:
                import grpc  # noqa: F401 - what Ray Client needs
            except ImportError:
                raise InputError(
                    f"--ray-address ray://... needs Ray Client: {INSTALL_HINT}"
                ) from None
        _probe(options.address)
    _quiet(ray)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address is None:
        kwargs.update(include_dashboard=False, num_cpus=options.num_cpus)
    else:
        kwargs["address"] = options.address
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise EnvironmentFailure(
            f"--ray-address {options.address}: {' '.join(str(error).split())}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet(ray: Any) -> None:
    """Keep stderr for madapt's progress and its one-line errors: Ray's INFO lines and
    Python warnings go to Ray's log files (or nowhere)."""
    warnings.filterwarnings("ignore", module=r"ray\.")
    for name in ("ray", "ray.data", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """Silence Ray Data's console handlers for a run: its INFO lines and the traceback it
    prints for a failed worker would bury madapt's progress and one-line error. Its log file
    (``ray-data.log`` in the Ray session's logs) still gets everything."""
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler)]  # fmt: skip
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def madapt_error(error: BaseException) -> MadaptError | None:
    """The madapt error a Ray worker raised, found in the chain Ray wraps it in (a
    ``RayTaskError`` and Ray Data's ``UserCodeException``), or None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MadaptError) and not _wrapped_by_ray(current):
            return current
        stack += [current.__cause__, current.__context__]
        as_instance = getattr(current, "as_instanceof_cause", None)
        if callable(as_instance):
            with contextlib.suppress(Exception):
                stack.append(as_instance())
        stack.append(getattr(current, "cause", None))
    return None


def _wrapped_by_ray(error: BaseException) -> bool:
    """Ray re-raises a worker's error as a class deriving from both ``RayTaskError`` and the
    error's own class, whose message is the worker's whole traceback."""
    return type(error).__module__.startswith("ray.")


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Re-raise a madapt error from a worker as itself (one line, its exit code)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, MadaptError) and not _wrapped_by_ray(error):
            raise
        found = madapt_error(error)
        if found is None:
            raise
        # Ray Data appends its retry advice to the message on new lines: madapt's is one line
        raise type(found)(str(found).split("\n", 1)[0], found.exit_code) from None


def actor_pool(options: RayOptions) -> dict[str, Any]:
    """The ``map_batches`` keywords of a fixed pool of ``options.workers`` actors."""
    from ray.data import ActorPoolStrategy

    return {
        "compute": ActorPoolStrategy(size=options.workers),
        "num_cpus": options.cpus_per_worker,
        "num_gpus": options.gpus_per_worker or None,
        "batch_size": None,  # one call per block: the driver cut the blocks to batch_rows
        "batch_format": "pyarrow",
        "zero_copy_batch": True,
        # not given on purpose: Ray Data's actor pools default to max_restarts=-1 and
        # max_task_retries=-1 (an actor that dies is restarted and its task retried), which
        # exactly-once relies on; passing them is deprecated in Ray 2.60
    }


def run_waves(
    ray: Any,
    blocks: Iterator[pa.Table],
    options: RayOptions,
    worker: type,
    worker_kwargs: dict[str, Any],
) -> Iterator[pa.Table]:
    """Send ``blocks`` (each ``batch_rows`` rows or fewer) through ``worker`` (a callable
    class: built once per actor with ``worker_kwargs``, called once per block) in waves of
    ``wave_rows`` rows; yield each output table in input order, as the driver receives it."""
    _configure(ray)
    wave: list[pa.Table] = []
    rows = 0
    for block in blocks:
        wave.append(block)
        rows += block.num_rows
        if rows >= options.wave_rows:
            yield from _one_wave(ray, wave, options, worker, worker_kwargs)
            wave, rows = [], 0
    if wave:
        yield from _one_wave(ray, wave, options, worker, worker_kwargs)


def _configure(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output in the source's order
    context.enable_progress_bars = False  # madapt reports progress itself


def run_fragments(
    ray: Any,
    fragments: list[dict[str, Any]],
    options: RayOptions,
    worker: type,
    worker_kwargs: dict[str, Any],
) -> Iterator[pa.Table]:
    """Send each of ``fragments`` (a few bytes saying what to read: the workers read the rows
    themselves) to ``worker``, whose call yields the output tables of one fragment; yield
    every output table in fragment order, as the driver receives it. The driver holds no
    rows: the actors start on the first fragment at once."""
    if not fragments:
        return
    _configure(ray)
    dataset = ray.data.from_items(fragments, override_num_blocks=len(fragments))
    keywords = {**actor_pool(options), "batch_size": 1}  # one fragment a call
    mapped = dataset.map_batches(worker, fn_constructor_kwargs=worker_kwargs, **keywords)
    with _quiet_console(), worker_errors():
        for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _one_wave(
    ray: Any, wave: list[pa.Table], options: RayOptions, worker: type, kwargs: dict[str, Any]
) -> Iterator[pa.Table]:
    dataset = ray.data.from_arrow_refs([ray.put(block) for block in wave])
    mapped = dataset.map_batches(worker, fn_constructor_kwargs=kwargs, **actor_pool(options))
    with _quiet_console(), worker_errors():
        for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
