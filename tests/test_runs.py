"""virnucpro/runs.py: one writer per folder (the lock), the team of processes a run is (torchrun, SLURM
arrays, or one process alone), and the records a resume reads."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from virnucpro import runs
from virnucpro.errors import InputError
from virnucpro.runs import LOCK_FILE, Team


# ------------------------------------------------------------ the folder lock
def test_a_lock_can_be_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "LOCK_POLL_SECONDS", 0.05)
    events = []

    def hold():
        with runs.folder_lock(tmp_path):
            events.append("held")
            time.sleep(0.5)
            events.append("released")

    holder = threading.Thread(target=hold)
    holder.start()
    while not events:
        time.sleep(0.01)
    with pytest.raises(InputError, match="is in use by another run"):
        with runs.folder_lock(tmp_path):
            pass
    with runs.folder_lock(tmp_path, wait=True):
        events.append("taken")
    holder.join()
    assert events == ["held", "released", "taken"]


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path, caplog):
    finished = subprocess.Popen(["true"])
    finished.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": finished.pid, "host": socket.gethostname()}))
    with runs.folder_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that ended without releasing it (pid {finished.pid}" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_no_run_wrote_whole_is_taken_over(tmp_path, caplog):
    """An empty lock (an older version on a full disk) blocks nothing; this version never leaves one."""
    (tmp_path / LOCK_FILE).write_text("")
    with runs.folder_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
    assert "taking over the lock of a run that ended without releasing it" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


# ------------------------------------------------------------ the team
@pytest.fixture
def environment(monkeypatch):
    """Set the launcher's variables of one process (torchrun's or SLURM's), and no others."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",
                 "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)

    def set_to(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
    return set_to


def test_a_process_alone_is_a_team_of_one(environment):
    assert Team.from_environment() == Team(0, 1, 0, False)


def test_torchrun_processes_run_together_on_their_gpus(environment):
    environment(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1")
    team = Team.from_environment()
    assert (team.rank, team.world, team.local_rank, team.together, team.leads) == (3, 4, 1, True, False)
    assert [number for number in range(1, 13) if team.owns(number)] == [4, 8, 12]


def test_each_task_of_an_array_of_inputs_is_a_run_of_its_own(environment):
    """sbatch --array=0-3, one input a task (the usual pattern): without --slurm-array a task is alone."""
    environment(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="4")
    assert Team.from_environment() == Team()
    team = Team.from_environment(slurm_array=True)
    assert (team.rank, team.world, team.array, team.together, team.leads) == (2, 4, True, False, True)


@pytest.mark.parametrize("variables, words", [
    ({}, "--slurm-array: this is not a task of a SLURM array job"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"}, "is not one of 2 consecutive tasks"),
    ({"SLURM_ARRAY_TASK_ID": "abc", "SLURM_ARRAY_TASK_COUNT": "2"},
     "SLURM_ARRAY_TASK_ID=abc is not a whole number"),
])
def test_a_slurm_array_the_run_cannot_share_is_one_line(environment, variables, words):
    environment(**variables)
    with pytest.raises(InputError, match=words):
        Team.from_environment(slurm_array=True)


@pytest.mark.parametrize("variables, words", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set without RANK"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE=two is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK 5 is not one of WORLD_SIZE 2 processes"),
])
def test_a_torchrun_environment_that_is_not_one_is_one_line(environment, variables, words):
    environment(**variables)
    with pytest.raises(InputError, match=words):
        Team.from_environment()


# ------------------------------------------------------------ records
def test_a_record_is_read_or_refused_in_one_line(tmp_path):
    path = tmp_path / "record.json"
    assert runs.read_record(str(path), "this tool", "fix it") is None
    path.write_text(json.dumps({"settings": 1}))
    assert runs.read_record(str(path), "this tool", "fix it", keys=("settings",)) == {"settings": 1}
    for content in ("[1, 2]", "{not json", json.dumps({"other": 1})):
        path.write_text(content)
        with pytest.raises(InputError, match=r"record.json: damaged, or written by another version of this tool; "
                                             r"fix it"):
            runs.read_record(str(path), "this tool", "fix it", keys=("settings",))
    path.unlink()
    path.mkdir()
    with pytest.raises(InputError, match="record.json: a folder, where this tool keeps a file; move it away"):
        runs.read_record(str(path), "this tool", "fix it")
