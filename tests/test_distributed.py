"""How the processes of a distributed run report why they stop (`stops_reported_once`), with the
launcher's store played by one in this process: each rank's exit is simulated in turn."""
import datetime
import signal

import pytest
import torch
import torch.distributed as dist

from sifa.engine.distributed import DistContext, stops_reported_once
from sifa.errors import CheckpointError

CONNECTION_LOST = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:23977")


@pytest.fixture
def sigint_restored():
    """An interrupted process ignores further Ctrl-C; pytest's must not."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def two_ranks():
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, timeout=datetime.timedelta(seconds=10))
    return [DistContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), store=store)
            for rank in (0, 1)]


def exit_status(ctx, error):
    """The exit status of rank ``ctx.rank`` when its work raises ``error``."""
    with pytest.raises(SystemExit) as exit_info:
        with stops_reported_once(ctx, lambda: "rerun with resume=true"):
            raise error
    return exit_info.value.code


def test_an_error_every_rank_meets_is_printed_once(capsys):
    assert [exit_status(ctx, CheckpointError("x.pth is truncated")) for ctx in two_ranks()] == [2, 2]
    assert capsys.readouterr().err == "error: x.pth is truncated\n"


def test_the_rank_that_lost_its_peer_stops_quietly_with_the_peers_status(capsys):
    rank_0, rank_1 = two_ranks()
    assert exit_status(rank_1, CheckpointError("list.txt, line 5: video 'a': frame file '00001.jpg' not found")) == 2
    assert exit_status(rank_0, CONNECTION_LOST) == 2
    assert capsys.readouterr().err == "error: list.txt, line 5: video 'a': frame file '00001.jpg' not found\n"


def test_each_interrupted_rank_says_once_where_to_resume(capsys, sigint_restored):
    rank_0, rank_1 = two_ranks()
    assert exit_status(rank_0, KeyboardInterrupt()) == 130
    assert exit_status(rank_1, CONNECTION_LOST) == 130  # its own Ctrl-C came after its peer was gone
    assert capsys.readouterr().err.splitlines() == ["interrupted (rank 0): rerun with resume=true",
                                                    "interrupted (rank 1): rerun with resume=true"]


def test_the_first_failure_of_a_bug_keeps_its_traceback(capsys):
    rank_0, rank_1 = two_ranks()
    with pytest.raises(ZeroDivisionError):
        with stops_reported_once(rank_0, lambda: ""):
            1 / 0
    assert exit_status(rank_1, CONNECTION_LOST) == 1
    assert capsys.readouterr().err == ""


def test_a_single_process_reports_without_a_store(capsys, sigint_restored):
    single = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert exit_status(single, CheckpointError("x.pth is truncated")) == 2
    assert exit_status(single, KeyboardInterrupt()) == 130
    with pytest.raises(RuntimeError, match="Connection closed"):
        with stops_reported_once(single, lambda: ""):
            raise CONNECTION_LOST
    assert capsys.readouterr().err.splitlines() == ["error: x.pth is truncated", "interrupted: rerun with resume=true"]
