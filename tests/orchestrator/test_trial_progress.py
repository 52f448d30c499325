import io
import time

import torch

from orchestrator.trial_progress import TrialProgress, bar
from workloads.training import TrainConfig, fit, reporting_epochs


class Terminal(io.StringIO):
    def isatty(self):
        return True


def tiny_fit(epochs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    fit(torch.nn.Linear(4, 3), x, y, TrainConfig(epochs=epochs, batch_size=8), device=torch.device("cpu"))


def test_bar_is_proportional_and_full_at_the_budget():
    assert bar(0, 100, 10) == "[..........]"
    assert bar(45, 100, 10) == "[####......]"
    assert bar(100, 100, 10) == "[##########]"
    assert bar(7, 0, 4) == "[####]"


def test_fit_reports_each_epoch_to_the_callback_in_scope_only():
    seen = []
    with reporting_epochs(lambda done, total: seen.append((done, total))):
        tiny_fit(3)
    tiny_fit(2)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_off_a_terminal_each_phase_prints_one_finished_line_with_its_note_and_epochs(monkeypatch):
    out = io.StringIO()
    progress = TrialProgress(out)
    with progress.phase("victim") as phase:
        tiny_fit(2)
        phase.note = "digits cnn, from the cache"
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("victim") and "digits cnn, from the cache" in lines[0] and "epoch 2/2" in lines[0]


def test_a_failed_phase_says_so_and_the_error_propagates():
    out = io.StringIO()
    try:
        with TrialProgress(out).phase("benign pass"):
            raise RuntimeError("service lost")
    except RuntimeError as e:
        assert str(e) == "service lost"
    assert out.getvalue().rstrip().endswith("FAILED")


def test_on_a_terminal_the_running_phase_is_redrawn_in_place(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    out = Terminal()
    with TrialProgress(out, every_s=0.01).phase("attack knockoff r0"):
        tiny_fit(3)
        time.sleep(0.2)
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3 and text.endswith("\n")
    assert "epoch 3/3" in text.splitlines()[-1].rsplit("\r\x1b[K", 1)[-1]


def test_silent_without_a_stream():
    with TrialProgress().phase("victim") as phase:
        phase.note = "x"
    assert TrialProgress().live is False
