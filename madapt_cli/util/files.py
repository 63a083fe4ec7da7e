"""Output directories madapt writes (stores, adaptors, reports), and the one guard they share.

madapt only ever replaces a directory it can prove it wrote: one holding a ``madapt.json``
marker of the same kind (or, for artifacts of releases before the marker, exactly the files
such a release wrote), and only when asked to (``--overwrite``). An output that is, contains or
lies inside one of the command's inputs is refused. Outputs are built in a staging sibling
``.NAME.tmp-PID-HEX`` and renamed into place, so a killed run leaves no half-written output; a
later run removes the staging of a process that no longer exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from madapt_cli.errors import EnvironmentFailure, InputError

MARKER = "madapt.json"


#: "export": a model folder `madapt export` wrote
KINDS = ("store", "adaptor", "report", "export")


# What releases before the marker wrote, so their outputs can still be replaced.
_LEGACY = {
    # the store's own marker, and otherwise only table directories (checked in written_kind)
    "store": lambda names: "madapt-store.json" in names,
    "adaptor": lambda names: names == {"config.json", "adaptor.safetensors"},
    "report": lambda names: (
        "report.json" in names
        and all(n in ("report.json", "report.md") or n.endswith(".png") for n in names)
    ),
}


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{32}$")


def write_marker(directory: Path, kind: str, files: Sequence[str] | None = None) -> None:
    """Write the marker; ``files``, the top-level names madapt wrote, lets a later run prove
    that nothing was added since (see :func:`written_kind`)."""
    from madapt_cli import __version__

    record: dict[str, object] = {"kind": kind, "madapt_version": __version__}
    if files is not None:
        record["files"] = sorted(files)
    (directory / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def written_kind(directory: Path) -> str | None:
    """The kind of madapt output ``directory`` is, or None if madapt cannot prove it wrote it:
    a marker of a known kind, and no top-level entry besides those the marker lists (a store
    may also hold further table directories); or exactly what a release before the marker
    wrote. A staging or retired directory of a run (``.NAME.tmp-...``) is never an output."""
    if _STAGING.match(directory.name):
        return None
    try:
        entries = {entry.name: entry for entry in directory.iterdir()}
    except OSError:
        return None
    names = set(entries)
    if MARKER in names:
        try:
            record = json.loads((directory / MARKER).read_text(encoding="utf-8"))
            kind = record.get("kind")
            files = record.get("files")
        except (OSError, ValueError, AttributeError):
            return None
        if kind not in KINDS:
            return None
        if files is not None:
            if not isinstance(files, list):
                return None
            extra = names - set(files) - {MARKER, *(_STORE_FILES if kind == "store" else ())}
            if any(kind != "store" or not _is_plain_dir(entries[n]) for n in extra):
                return None
        return kind
    for kind, matches in _LEGACY.items():
        if matches(names) and (
            kind != "store" or all(n in _STORE_FILES or _is_plain_dir(entries[n]) for n in names)
        ):
            return kind
    return None


#: the files a store keeps beside its tables: its marker and its write lock (store layer)
_STORE_FILES = ("madapt-store.json", ".madapt-store.lock")


def _is_plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output(
    out: Path,
    kind: str,
    *,
    overwrite: bool,
    inputs: Sequence[str | Path | None] = (),
    option: str = "--out",
) -> None:
    """Refuse, before any work, an output that cannot be written safely: an input, a file, a
    symbolic link, a directory madapt did not write (or of another kind), an existing output
    without ``overwrite`` (:class:`InputError`, exit 2); a place the machine will not let us
    write (:class:`EnvironmentFailure`, exit 4). Writes nothing."""
    out = Path(out)
    target = out.resolve()
    for source in inputs:
        if source is not None and _overlaps(target, Path(source).resolve()):
            raise InputError(
                f"{option} {out} is, contains or lies inside the input {source}: choose "
                "another directory"
            )
    if out.is_symlink():
        raise InputError(f"{option} {out} is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} is a file, not a directory")
    existing = out if out.exists() else _nearest_existing(out.parent)
    if not existing.is_dir():
        raise InputError(f"{option} {out}: {existing} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        found = written_kind(out)
        if found != kind:
            what = f"a madapt {found}" if found else "files madapt did not write"
            raise InputError(
                f"{option} {out} already exists and holds {what}; madapt replaces only "
                f"an output of kind {kind} that it wrote: choose another directory"
            )
        if not overwrite:
            raise InputError(f"{option} {out} already exists; pass --overwrite to replace it")
    # the directory that will receive the new entry (out's parent, or the first one to create)
    writable = out.parent if out.exists() else _nearest_existing(out.parent)
    if not os.access(writable, os.W_OK | os.X_OK):
        raise EnvironmentFailure(
            f"{option} {out}: cannot write in {writable} (read-only or permission denied)"
        )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (as anything)."""
    path = Path(os.path.abspath(path))
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def remove_stale_staging(parent: Path, name: str | None = None) -> None:
    """Delete staging and retired directories of madapt processes that no longer run."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        match = _STAGING.match(entry.name)
        if not match or (name is not None and match.group("name") != name):
            continue
        pid = match.group("pid")
        if pid is not None and process_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this process does; one of another user counts as
    running), so that its staging is left alone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_path(target: Path, purpose: str = "tmp") -> Path:
    """A hidden sibling of ``target`` named for this process, so stale ones can be found."""
    return target.parent / f".{target.name}.{purpose}-{os.getpid()}-{uuid.uuid4().hex}"


def replace_directory(staging: Path, target: Path) -> None:
    """Put the finished directory ``staging`` at ``target``, replacing any old one.

    The old directory is first renamed aside, so ``target`` always holds either the old or
    the new contents in full, never a mix; the old one is deleted afterwards. Callers check
    first (:func:`check_output`) that an old ``target`` is madapt's to replace.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        retired = staging_path(target, "old")
        os.replace(target, retired)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(retired, target)  # put the old one back rather than lose it
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextmanager
def staged_output(
    out: Path,
    kind: str,
    *,
    overwrite: bool,
    inputs: Sequence[str | Path | None] = (),
    option: str = "--out",
) -> Iterator[Path]:
    """Yield an empty staging directory (with the marker) that becomes ``out`` on success.

    Checks ``out`` (:func:`check_output`), removes stale staging of earlier killed runs, and
    on any failure removes this run's staging, leaving ``out`` as it was.
    """
    out = Path(out)
    check_output(out, kind, overwrite=overwrite, inputs=inputs, option=option)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent, out.name)
    staging = staging_path(out)
    staging.mkdir()
    try:
        write_marker(staging, kind)
        yield staging
        write_marker(staging, kind, files=[entry.name for entry in staging.iterdir()])
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
