"""Runs: one writer per folder (a lock), the processes of a run (one team
for torchrun and SLURM arrays), and the settings record a resumed run must match."""
from __future__ import annotations

import contextlib
import datetime
import errno
import gc
import json
import os
import resource
import socket
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed

from virnucpro.devices import device_name, resolve_device
from virnucpro.errors import InputError
from virnucpro.log import logger

LOCK_FILE = ".virnucpro.lock"


LOCK_POLL_SECONDS = 1.0


def _lock_holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (assumed so on another host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(path: str) -> bool:
    """Create the lock ``path`` holding this process's pid, host and start, in one step: written to a
    temporary file, then linked into place (refused when a lock is there), so that a lock is never empty,
    even on a full disk; False when another holds it."""
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
    fd, written = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f"{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(holder)
        os.link(written, path)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        return _create(path, holder)                   # a file system without hard links
    finally:
        os.remove(written)


def _create(path: str, holder: str) -> bool:
    """The lock by exclusive creation, then its record; removed again when the record cannot be written."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(holder)
    except BaseException:
        os.remove(path)
        raise
    return True


def _holder(path: str) -> dict | None:
    """Who holds a lock: ``{'pid', 'host', 'since'}``; None when nobody (gone meanwhile) or a record that no
    run of this tool writes (empty or damaged: left by an older version on a full disk), which is stale."""
    try:
        with open(path) as handle:
            holder = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, option: str = "-o", name: str = LOCK_FILE, wait: bool = False):
    """Hold ``folder/<name>`` (default ``.virnucpro.lock``) while the block
    runs, so one run at a time writes into ``folder``; a lock left by a
    process that died on this host, or one no run wrote whole, is taken
    over. Held by a live process, the lock is refused, or with ``wait``
    waited for. Creates ``folder`` if needed and removes it again if it is
    still empty when the block ends."""
    folder = os.fspath(folder)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    waiting = False
    while not _take(path):
        holder = _holder(path)
        if holder is None:
            continue                                     # released meanwhile: try again
        if holder and _lock_holder_alive(holder):
            held_by = f"pid {holder['pid']} on {holder.get('host')} since {holder.get('since')}"
            if not wait:
                raise InputError(f"{folder} is in use by another run ({held_by}); wait for it to end or give "
                                 f"another {option}; if no such run exists any more, delete {path}")
            if not waiting:
                logger.info(f"{folder}: waiting for {held_by} to release {path}")
                waiting = True
            time.sleep(LOCK_POLL_SECONDS)
            continue
        logger.warning(f"{folder}: taking over the lock of a run that ended without releasing it"
                       + (f" (pid {holder['pid']} on {holder.get('host')})" if holder else ""))
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            if created and not os.listdir(folder):
                os.rmdir(folder)


@dataclass
class Team:
    """The processes of one run; process k of N scores shards k+1, k+1+N, ...
    One process alone is a team of one.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK; --nnodes for several
    machines) the processes run together, on GPU LOCAL_RANK: process 0 holds
    the output folder, checks the input and the folder first and assembles
    the final files once every process has scored its shards. The tasks of a
    SLURM array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) share a run only
    when asked to (--slurm-array; an array whose tasks each run their own
    input is the usual pattern): each task runs whenever the scheduler starts
    it, checks for itself, holds the folder only to set the run up and to
    assemble, and the last task to finish assembles."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    array: bool = False

    @classmethod
    def from_environment(cls, slurm_array: bool = False) -> Team:
        """torchrun and accelerate launch set RANK, WORLD_SIZE and LOCAL_RANK; a SLURM array task gets
        SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT, which make it a member of
        a team with ``slurm_array`` only."""
        if _whole_number("WORLD_SIZE", 1) > 1:
            if "RANK" not in os.environ:
                raise InputError("WORLD_SIZE is set without RANK: start the processes with torchrun (or accelerate "
                                 "launch), which sets both, or unset WORLD_SIZE for one process")
            team = cls(_whole_number("RANK"), _whole_number("WORLD_SIZE"), _whole_number("LOCAL_RANK", 0))
            if not 0 <= team.rank < team.world:
                raise InputError(f"RANK {team.rank} is not one of WORLD_SIZE {team.world} processes; start the "
                                 "processes with torchrun")
            return team
        if slurm_array:
            if "SLURM_ARRAY_TASK_ID" not in os.environ:
                raise InputError("--slurm-array: this is not a task of a SLURM array job (no SLURM_ARRAY_TASK_ID); "
                                 "submit it with sbatch --array=0-N, or leave --slurm-array out")
            world = _whole_number("SLURM_ARRAY_TASK_COUNT", 1)
            rank = _whole_number("SLURM_ARRAY_TASK_ID") - _whole_number("SLURM_ARRAY_TASK_MIN", 0)
            if not 0 <= rank < world:
                raise InputError(f"SLURM array task {os.environ['SLURM_ARRAY_TASK_ID']} is not one of {world} "
                                 "consecutive tasks; give the array as one range, e.g. --array=0-7")
            return cls(rank, world, array=True)
        return cls()

    @property
    def together(self) -> bool:
        """Whether the processes run together (torchrun), so that they can wait for each other."""
        return self.world > 1 and not self.array

    @property
    def leads(self) -> bool:
        """Whether this process checks the input and the folder, and reports."""
        return self.rank == 0 or self.array

    def __enter__(self):
        if self.together:
            # gloo: barriers and small objects only, on CPUs and GPUs alike; ranks may wait hours for each other
            torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        return self

    def __exit__(self, *exc_info):
        if self.together:
            torch.distributed.destroy_process_group()

    def owns(self, number: int) -> bool:
        """Whether item ``number`` (1-based: a shard) is this process's."""
        return (number - 1) % self.world == self.rank

    def share_of(self, items: list) -> list:
        """This process's items: those ``owns`` gives it."""
        return items[self.rank::self.world]

    def barrier(self) -> None:
        if self.together:
            import torch.distributed
            torch.distributed.barrier()

    def share(self, value):
        """Process 0's ``value``, in every process of a torchrun team."""
        if not self.together:
            return value
        import torch.distributed
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def holding(self, output_dir: str):
        """The output folder's lock, for an array task (waited for, as its siblings take it too); process 0
        of any other team holds it for the whole run."""
        return folder_lock(output_dir, wait=True) if self.array else contextlib.nullcontext()

    def device(self, requested: str):
        """The device asked for; ``cuda`` means this process's GPU (LOCAL_RANK: cuda:0 alone). A GPU is made
        the process's current one, so that nothing (a pinned copy, say) opens a context on GPU 0 besides."""
        device = resolve_device(requested)
        if device.type == "cuda" and device.index is None:
            device = resolve_device(f"cuda:{self.local_rank}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device


def _whole_number(variable: str, default: int | None = None) -> int:
    """An environment variable a launcher sets (torchrun, SLURM), as a whole number."""
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{variable}={value} is not a whole number; it is the launcher's (torchrun or SLURM) to "
                         "set, so unset it or start the run with the launcher") from None


def read_record(path: str, writer: str, fix: str, keys: tuple[str, ...] = ()) -> dict | None:
    """A JSON record ``writer`` keeps in a folder (run.json, extraction.json, ...), or None when there is
    none; one that is not a readable JSON object holding ``keys`` is refused in one line ending with ``fix``."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, where {writer} keeps a file; move it away") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not all(key in record for key in keys):
        raise InputError(f"{path}: damaged, or written by another version of {writer}; {fix}")
    return record


def changed_settings(recorded: dict, settings: dict) -> list[str]:
    """The names of the settings whose recorded value differs (sorted): what a resume would mix."""
    return sorted(key for key in settings if recorded.get(key) != settings[key])


@contextlib.contextmanager
def rare_garbage_collection():
    """Run Python's cycle collector rarely within the block. Prediction makes
    millions of small containers (token id lists, table rows) that hold no
    cycles; at the default pace (a collection every 700 new containers, each
    scanning the survivors) the collector took about a sixth of its host time."""
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


# ---------------------------------------------------------------- what a run costs
def reset_peak_memory() -> None:
    """Start the process's peak resident memory afresh (Linux: VmHWM, reset through clear_refs)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")


def peak_memory_mb() -> int:
    """The process's peak resident memory since ``reset_peak_memory`` (or its start, elsewhere than Linux)."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) // 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Costs:
    """What a run costs, from its start: wall and CPU seconds, the models' loading, peak host and GPU memory,
    the frames it scored and their rate (loading left out), on which device."""

    def __init__(self, device: torch.device):
        self.device, self.loading_seconds, self.frames = device, 0.0, 0
        reset_peak_memory()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.started, self.cpu_started = time.perf_counter(), cpu_seconds()

    @contextlib.contextmanager
    def loading(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.loading_seconds += time.perf_counter() - started

    def record(self) -> dict:
        wall = time.perf_counter() - self.started
        scoring = max(wall - self.loading_seconds, 1e-9)
        return {"device": device_name(self.device), "wall_seconds": round(wall, 2),
                "cpu_seconds": round(cpu_seconds() - self.cpu_started, 2),
                "model_loading_seconds": round(self.loading_seconds, 2), "peak_host_memory_mb": peak_memory_mb(),
                "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20)
                if self.device.type == "cuda" else None,
                "frames_scored": self.frames, "frames_per_second": round(self.frames / scoring, 1)}


def cpu_seconds() -> float:
    """The CPU time this process has used, its threads' together (user and system)."""
    times = os.times()
    return times.user + times.system
