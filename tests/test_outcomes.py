"""Outcome classification over a corpus written from the documented output shapes."""

import json
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtimes.runs.outcomes import Usage, classify_claude, classify_codex, price
from tickets.verdicts import parse_verdict


def claude_result(subtype="success", is_error=False, result=None, **extra):
    obj = {"type": "result", "subtype": subtype, "is_error": is_error, "duration_ms": 10, "duration_api_ms": 5,
           "num_turns": 4, "session_id": "s", "total_cost_usd": 0.25, **extra}  # fmt: skip
    if result is not None:
        obj["result"] = result
    return obj


def stream(*objs):
    init = {"type": "system", "subtype": "init", "session_id": "s", "model": "claude-opus-4-7"}
    return "\n".join(json.dumps(o) for o in (init, *objs)) + "\n"


CLAUDE_CORPUS = [
    # (name, output, exit_outcome, reason, verdict)
    ("success json", json.dumps(claude_result(result="DONE — all tests pass")), "completed", "completed", "done"),
    ("success stream", stream(claude_result(result="Implemented it.")), "completed", "completed", None),
    ("max turns", stream(claude_result("error_max_turns", True, errors=["Reached maximum number of turns (40)"],
                                       terminal_reason="max_turns")), "partial-useful", "max-turns", None),
    ("max turns, empty errors", json.dumps(claude_result("error_max_turns", True, errors=[])), "partial-useful",
     "max-turns", None),
    ("max budget", stream(claude_result("error_max_budget_usd", False, errors=["Reached maximum budget ($5)"])),
     "partial-useful", "max-budget", None),
    ("max budget is_error", json.dumps(claude_result("error_max_budget_usd", True)), "partial-useful", "max-budget",
     None),
    ("during execution", stream(claude_result("error_during_execution", True, errors=["boom"])), "failed",
     "execution-error", None),
    ("structured output", json.dumps(claude_result("error_max_structured_output_retries", True)), "failed",
     "structured-output-retries", None),
    ("api error on success", stream(claude_result("success", True, 'API Error: 500 {"type":"error"}',
                                                  terminal_reason="api_error", api_error_status=500)),
     "failed", "api-error", None),
    ("overloaded", json.dumps(claude_result("success", True, 'API Error: 529 {"type":"error","error":{"type":'
                                            '"overloaded_error","message":"Overloaded"}}', api_error_status=529)),
     "failed", "overloaded", None),
    ("rate limited, old exit 0",
     json.dumps(claude_result("success", True, "API Error: Rate limit reached", stop_reason="stop_sequence")),
     "failed", "rate-limited", None),
    ("plan limit", json.dumps(claude_result("success", True, "You've hit your limit · resets 1pm (Europe/Lisbon)")),
     "", "usage-limit", None),
    ("not logged in", json.dumps(claude_result("success", True, "Not logged in · Please run /login",
                                               terminal_reason="api_error")), "failed", "auth-error", None),
    # The real unauthenticated CLI's result (2.1.197): terminal_reason "completed", one turn.
    ("not logged in, real", json.dumps(claude_result("success", True, "Not logged in · Please run /login",
                                                     terminal_reason="completed", num_turns=1, api_error_status=None)),
     "failed", "auth-error", None),
    ("invalid key", json.dumps(claude_result("success", True, "Invalid API key · Fix external API key")), "failed",
     "auth-error", None),
    ("credit", json.dumps(claude_result("success", True, "Credit balance too low · Add funds")), "failed",
     "billing-error", None),
    ("unknown model", json.dumps(claude_result("success", True, "API Error: 404 model: claude-x not found",
                                               api_error_status=404)), "failed", "unsupported-model", None),
    ("aborted", stream(claude_result("error_during_execution", True, terminal_reason="aborted_tools")), "failed",
     "interrupted", None),
    ("killed with no result", stream({"type": "assistant", "message": {"content": []}}), "failed", "interrupted",
     None),
    ("truncated stream", stream()[:-1] + '\n{"type":"result","subtype":"succ', "failed", "interrupted", None),
    ("success but partial verdict", json.dumps(claude_result(result="PARTIAL: half the endpoints")),
     "partial-useful", "verdict-partial", "partial"),
    ("success but failed verdict", json.dumps(claude_result(result="**FAILED** — cannot reproduce")), "failed",
     "verdict-failed", "failed"),
    ("done mentioning max_turns", json.dumps(claude_result(result="✅ DONE — finished just before max_turns")),
     "completed", "completed", "done"),
    ("review mentioning max_budget", stream(claude_result(result="## Verdict: REVIEW\nclose to max_budget")),
     "completed", "completed", "review"),
    ("question at max turns", json.dumps(claude_result("error_max_turns", True, result="[QUESTION] which API?")),
     "completed", "completed", "question"),
    ("empty", "", "failed", "unparseable-output", None),
    ("garbage", "Segmentation fault (core dumped)\n", "failed", "unparseable-output", None),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, output, exit_outcome, reason, verdict", CLAUDE_CORPUS, ids=[c[0] for c in CLAUDE_CORPUS]
)
def test_claude_corpus(name, output, exit_outcome, reason, verdict):
    outcome = classify_claude(output)
    assert (outcome.exit_outcome, outcome.reason, outcome.verdict) == (exit_outcome, reason, verdict)


def test_claude_reports_turns_and_cost():
    outcome = classify_claude(json.dumps(claude_result(result="ok")))
    assert (outcome.turns, outcome.cost_usd) == (4, 0.25)


def codex(*events):
    return "\n".join(json.dumps(e) for e in events) + "\n"


STARTED = ({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"})
UNSUPPORTED = "The 'codex-mini-latest' model is not supported when using Codex with a ChatGPT account."
CODEX_CORPUS = [
    ("completed", codex(*STARTED, {"type": "item.completed", "item": {"id": "item_1", "type": "agent_message",
                                                                       "text": "DONE: shipped"}},
                        {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 2}}),
     "completed", "completed", "done"),
    ("failed", codex(*STARTED, {"type": "turn.failed", "error": {"message": "stream disconnected"}}), "failed",
     "api-error", None),
    ("unsupported model", codex(*STARTED, {"type": "error", "message": UNSUPPORTED},
                                {"type": "turn.failed", "error": {"message": json.dumps(
                                    {"type": "error", "status": 400, "error": {"message": UNSUPPORTED}})}}),
     "failed", "unsupported-model", None),
    ("old unsupported", codex(*STARTED, {"type": "turn.failed", "error": {
        "message": 'unexpected status 400 Bad Request: {"detail":"Unsupported model"}'}}), "failed",
     "unsupported-model", None),
    ("error then completed", codex(*STARTED, {"type": "error", "message": "Reconnecting... 1/5"},
                                   {"type": "turn.completed", "usage": {}}), "completed", "completed", None),
    ("no terminal event", codex(*STARTED, {"type": "item.started", "item": {"id": "i", "type": "reasoning"}}),
     "failed", "interrupted", None),
    ("usage limit", codex(*STARTED, {"type": "turn.failed", "error": {"message": "You've hit your usage limit."}}),
     "", "usage-limit", None),
    ("rate limited", codex(*STARTED, {"type": "turn.failed", "error": {"message": "429 Too Many Requests"}}),
     "failed", "rate-limited", None),
    ("garbage", "\x00\x01binary\xff", "failed", "unparseable-output", None),
]  # fmt: skip


@pytest.mark.parametrize("name, output, exit_outcome, reason, verdict", CODEX_CORPUS, ids=[c[0] for c in CODEX_CORPUS])
def test_codex_corpus(name, output, exit_outcome, reason, verdict):
    outcome = classify_codex(output)
    assert (outcome.exit_outcome, outcome.reason, outcome.verdict) == (exit_outcome, reason, verdict)


def test_unparseable_output_quotes_what_was_seen_within_bounds():
    outcome = classify_claude("x" * 50_000 + "THE END")
    assert "THE END" in outcome.message
    assert len(outcome.message) < 400


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("DONE", "done"),
        ("**DONE** all green", "done"),
        ("✅ DONE — merged", "done"),
        ("## Verdict: REVIEW", "review"),
        ("[QUESTION] which database?", "question"),
        ("Verdict - done: shipped", "done"),
        ('  "APPROVED" by me', "approved"),
        ("> CHANGES_REQUESTED: fix tests", "changes_requested"),
        ("CHANGES REQUESTED", "changes_requested"),
        ("PARTIAL — two of three", "partial"),
        ("❌ FAILED", "failed"),
        ("Status: partial", "partial"),
        ("Notes first\n\nmore notes\n**DONE**", "done"),
        ("DONE, although I nearly hit max_turns", "done"),
        ("REVIEW please; max_budget was close", "review"),
        ("Done with the refactor, here is what changed", None),
        ("Failed to reach the API, retrying", None),
        ("DONEISH", None),
        ("REVIEWED the code", None),
        ("", None),
        ("   \n  ", None),
    ],
)
def test_verdict_prefixes(text, verdict):
    assert parse_verdict(text) == verdict


# The fuzz tests below are few-but-targeted: the deterministic sweep covers every documented field
# of every event with every JSON type, and hypothesis adds random nestings and mixes on top (its
# example generation, not the parsers, is what costs time: ~0.1 s per example on a busy machine).
# One value of every JSON type, plus the awkward ones: NaN, infinities, huge and negative numbers,
# deep nesting, strings that look like verdicts or status codes.
EVERY_TYPE = [None, True, False, 0, -1, 2**70, 1.5, float("nan"), float("inf"), float("-inf"), "", "DONE", "429",
              "x" * 5000, [], [None], ["DONE"], {}, {"type": "result"}, {"message": {"a": [1, {"b": None}]}},
              json.loads("[" * 200 + "]" * 200)]  # fmt: skip


json_values = st.sampled_from(EVERY_TYPE) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)
RESULT_FIELDS = ("subtype", "is_error", "result", "errors", "terminal_reason", "api_error_status", "num_turns",
                 "total_cost_usd", "usage", "session_id")  # fmt: skip
CODEX_FIELDS = ("error", "item", "message", "usage", "thread_id")
CODEX_TYPES = ("turn.completed", "turn.failed", "error", "item.completed", "thread.started")
result_like = st.fixed_dictionaries(
    {"type": st.just("result")},
    optional={
        "subtype": st.sampled_from(["success", "error_max_turns", "error_during_execution", "x"]) | json_values,
        "is_error": json_values,
        "result": st.text(max_size=200) | json_values,
        "errors": json_values,
        "terminal_reason": json_values,
        "api_error_status": json_values,
        "num_turns": json_values,
        "total_cost_usd": json_values,
    },
)
codex_like = st.fixed_dictionaries(
    {"type": st.sampled_from(CODEX_TYPES)},
    optional={"error": json_values, "item": json_values, "message": json_values, "usage": json_values},
)


def assert_classifies(text):
    for classify in (classify_claude, classify_codex):
        outcome = classify(text)
        assert outcome.exit_outcome in ("completed", "partial-useful", "failed", "")
        assert len(outcome.message) <= 2000


def test_every_field_of_every_event_tolerates_every_json_type():
    for value in EVERY_TYPE:
        for name in RESULT_FIELDS:
            base = claude_result(result="DONE — ok")
            assert_classifies(json.dumps({**base, name: value}))
            assert_classifies(json.dumps({"type": "result", name: value}))
        for event in CODEX_TYPES:
            for name in CODEX_FIELDS:
                assert_classifies(json.dumps({"type": event, name: value}))
        assert_classifies(json.dumps(value))
        assert_classifies(json.dumps({"type": value}))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
@example(b"\xff\xfe\x00{")  # invalid UTF-8 and NUL before a brace
@example(b'{"type": "result", "subtype": "success", "result": "\xed\xa0\x80"}')  # an encoded lone surrogate
@example(b"\xef\xbb\xbf" + json.dumps(claude_result(result="DONE")).encode())  # a byte-order mark
@example(b"\n" * 2000)
@example(b'{"type": "result"' * 100)
def test_parsers_never_raise_on_arbitrary_bytes(raw):
    for classify in (classify_claude, classify_codex):
        assert classify(raw).exit_outcome in ("completed", "partial-useful", "failed", "")
    parse_verdict(raw.decode("utf-8", "replace"))


@settings(max_examples=300, deadline=None)
@given(st.lists(result_like | codex_like | json_values, max_size=6))
@example([claude_result(result="DONE"), {"type": "result", "subtype": None}])  # a later broken result
@example([{"type": "turn.completed"}, {"type": "error", "message": None}, {"type": "turn.failed", "error": 3}])
def test_parsers_never_raise_on_arbitrary_json_lines(objects):
    assert_classifies("\n".join(json.dumps(o) for o in objects))


@settings(max_examples=400, deadline=None)
@given(st.text())
@example("**" * 5000 + "DONE")
@example("\u2705 " * 300 + "DONE")
@example("Verdict:" * 400)
def test_verdict_parser_never_raises(text):
    assert parse_verdict(text) in (
        None,
        "done",
        "review",
        "question",
        "approved",
        "changes_requested",
        "partial",
        "failed",
    )


@pytest.mark.parametrize(
    "text, reason",
    [
        ("API Error: 401 unauthorized", "auth-error"),
        ("API Error: 429 slow down", "rate-limited"),
        ("connection refused on port 4012", "api-error"),
        ("request req_14290 failed", "api-error"),
    ],
)
def test_status_codes_in_error_text_count_only_as_whole_numbers(text, reason):
    from runtimes.runs.outcomes import error_reason

    assert error_reason(text) == reason


def test_claude_usage_counts_cache_writes_as_input_and_cache_reads_as_cached():
    result = claude_result(result="ok", session_id="s-9", total_cost_usd=0.0123)
    result["usage"] = {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 400,
                       "output_tokens": 20}  # fmt: skip
    usage = classify_claude(json.dumps(result)).usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (15, 400, 20)
    assert (usage.cost_usd, usage.session_id) == (Decimal("0.012300"), "s-9")


def test_claude_cost_missing_or_garbage_is_unknown_not_zero():
    for cost in (None, "0.5", True, -1, float("inf")):
        result = claude_result(result="ok")
        result["total_cost_usd"] = cost
        assert classify_claude(json.dumps(result)).cost_usd is None


def test_a_claude_stream_cut_off_before_its_result_still_keeps_the_session_id():
    init = {"type": "system", "subtype": "init", "session_id": "s-cut"}
    outcome = classify_claude(json.dumps(init) + "\n")
    assert (outcome.reason, outcome.usage.session_id) == ("interrupted", "s-cut")


def test_codex_usage_sums_every_completed_turn_and_keeps_the_thread_id():
    output = codex(
        {"type": "thread.started", "thread_id": "th-7"},
        {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 60, "output_tokens": 7}},
        {"type": "turn.completed", "usage": {"input_tokens": 50, "cached_input_tokens": 0, "output_tokens": 3}},
    )
    usage = classify_codex(output).usage
    assert (usage.turns, usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (2, 150, 60, 10)
    assert (usage.cost_usd, usage.session_id) == (None, "th-7")


def test_price_charges_cached_input_at_its_own_price_and_unknown_prices_leave_the_cost_unknown():
    usage = Usage(input_tokens=1_200_000, cached_tokens=1_000_000, output_tokens=100_000)
    priced = price(usage, Decimal("1.25"), Decimal("0.125"), Decimal("10"))
    # 200k input at 1.25 + 1M cached at 0.125 + 100k output at 10 (USD per million tokens).
    assert priced.cost_usd == Decimal("1.375000")
    assert price(usage, Decimal("1.25"), None, Decimal("10")).cost_usd == Decimal("2.500000")
    assert price(usage, None, None, Decimal("10")).cost_usd is None
    assert price(Usage(), Decimal(1), Decimal(1), Decimal(1)).cost_usd is None
