"""core.device: torch computes on as many threads as the cores this process may use, or --threads."""

import argparse
import os

import pytest
import torch

from core.compute import Threads, available_cores
from core.device import set_threads
from core.errors import TwinError
from core.flags import add_arguments, from_args


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def parse(*argv: str) -> Threads:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Threads)
    return from_args(Threads, parser.parse_args(argv))


def test_threads_follow_the_cores_this_process_may_use(restore_threads, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # as under `taskset -c 3`
    assert available_cores() == 1 and set_threads(parse()) == 1 and torch.get_num_threads() == 1
    assert "computing on 1 CPU thread (the cores available; --threads to change)" in capsys.readouterr().err


def test_the_threads_flag_overrides_the_cores(restore_threads, capsys):
    assert set_threads(parse("--threads", "2")) == 2 and torch.get_num_threads() == 2
    assert "computing on 2 CPU threads (--threads)" in capsys.readouterr().err


def test_no_threads_is_a_user_error():
    with pytest.raises(TwinError, match="^--threads: must be 1 or more, got 0$"):
        set_threads(parse("--threads", "0"))


def test_under_torchrun_each_rank_gets_its_share_of_the_cores(restore_threads, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets whenever it is unset: not followed
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert set_threads(parse()) == 2 and torch.get_num_threads() == 2
    assert "computing on 2 CPU threads per rank (8 cores available shared by 3 ranks" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # more ranks than cores: one thread each, never none
    assert set_threads(parse(), quiet=True) == 1 and capsys.readouterr().err == ""
    assert set_threads(parse("--threads", "4")) == 4  # the flag still decides
