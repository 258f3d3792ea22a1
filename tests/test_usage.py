"""Turns, tokens and cost recorded per run at harvest, from real runs of the fake CLIs in tmux."""

from decimal import Decimal

import pytest

from runtimes.models import Runtime, WorkerProfile
from runtimes.reconcile import reconcile
from tests.test_harvest import run_worker

pytestmark = pytest.mark.django_db


def test_a_claude_run_records_turns_tokens_cost_and_session_id(tmux, tmux_socket, fake_bin, tmp_path):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-cost-1.75")
    reconcile()
    runtime.refresh_from_db()
    assert runtime.runtime_class == "exited"
    assert (runtime.turns, runtime.input_tokens, runtime.cached_tokens, runtime.output_tokens) == (3, 15, 400, 20)
    assert runtime.cost_usd == Decimal("1.75")
    assert runtime.agent_session_id == "0b7f3a52-sess-1"


def test_a_codex_run_is_priced_from_its_profile(tmux, tmux_socket, fake_bin, tmp_path):
    WorkerProfile.objects.create(
        name="codex-priced", provider="codex", model="gpt-5.5",
        input_price_per_mtok=Decimal("1.25"), cached_input_price_per_mtok=Decimal("0.125"),
        output_price_per_mtok=Decimal("10"),
    )  # fmt: skip
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "gpt-5.5", provider="codex")
    Runtime.objects.filter(pk=runtime.pk).update(profile="codex-priced")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.turns, runtime.agent_session_id) == ("completed", 1, "019a6c1e-th-1")
    assert (runtime.input_tokens, runtime.cached_tokens, runtime.output_tokens) == (1_200_000, 1_000_000, 100_000)
    # 200k uncached input at 1.25 + 1M cached at 0.125 + 100k output at 10 USD per million tokens.
    assert runtime.cost_usd == Decimal("1.375")


def test_a_codex_run_without_prices_has_an_unknown_cost_not_zero(tmux, tmux_socket, fake_bin, tmp_path):
    WorkerProfile.objects.create(name="codex-unpriced", provider="codex", model="gpt-5.5")
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "gpt-5.5", provider="codex")
    Runtime.objects.filter(pk=runtime.pk).update(profile="codex-unpriced")
    reconcile()
    runtime.refresh_from_db()
    assert runtime.output_tokens == 100_000 and runtime.cost_usd is None
