"""What the default policy's levers cost a request in the gateway's CPU: routing `auto` by the alias's difficulty score
rather than by a rule's fixed target (the template's old `otherwise-small`), and counting and compressing a prompt over
the cap rather than refusing it, each under the default template and under the template as it was. Pure CPU, no
services, no upstream (a compression summary is an upstream call of its own, metered in the ledger, and not in these
figures). In the gateway routing runs on the event loop; counting and compressing a prompt of 32 KB or more run on the
CPU pool (core/cpu.py). Figures, not a test.

    TIKTOKEN_CACHE_DIR=../shared/tiktoken .venv/bin/python bench/default_policy.py
"""

import argparse
import asyncio
import functools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARD_QUESTION = (
    "Prove that the integral of 1/x^2 from 1 to infinity converges, then fix this function:\n"
    "```python\ndef area(r):\n    return 3.14 * r * r\n```\n"
)
WORDS = ["refund", "policy", "invoice", "the", "customer", "asked", "late", "café", "日本語", "1234", "ok"]


def median_seconds(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def long_chat(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are the help desk of a bicycle shop. Be brief."}]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"Turn {turn}: my order {1000 + turn} is late. " + "Still waiting. " * 20},
            {"role": "assistant", "content": f"Sorry about order {1000 + turn}. " + "Checking with the courier. " * 10},
        ]
    return [*messages, {"role": "user", "content": "So when will the last one arrive?"}]


def words_of(megabytes: float) -> str:
    words, size, index = [], 0, 0
    while size < megabytes * 1_000_000:
        word = WORDS[index % len(WORDS)] if index % 7 else str(index)
        words.append(word)
        size += len(word.encode()) + 1
        index += 1
    return " ".join(words)


def old_template(document: dict) -> dict:
    """The template before the levers: `otherwise-small` where the score now decides, every cap rejecting, no
    ceiling."""
    from routing.services import BY_DIFFICULTY_RULE, TOO_LONG_TO_COMPRESS_RULE

    rules = []
    for rule in document["rules"]:
        if rule["name"] == TOO_LONG_TO_COMPRESS_RULE:
            continue
        outcome = {**rule["outcome"], "over_cap_action": "reject"}
        if rule["name"] == BY_DIFFICULTY_RULE:
            rule, outcome = (
                {**rule, "name": "otherwise-small"},
                {**outcome, "target_model": "small", "fallback_models": []},
            )
        rules.append({**rule, "outcome": outcome})
    return {**document, "rules": rules}


def bench_routing(repeats: int) -> None:
    from routing.catalog import ModelCatalog, TenantAccess
    from routing.policy import RouteRequest, compile_policy, route_request
    from routing.services import default_policy_document
    from routing.tokens import count_chat_tokens

    catalog = ModelCatalog(models={}, access_by_tenant={1: TenantAccess("small", frozenset({"small", "large"}))})
    document = default_policy_document(small_model="small", large_model="large")
    scored = compile_policy(document, version=1)
    fixed = compile_policy(old_template(document), version=1)
    prompts = {
        "short plain": "What are your opening hours?",
        "long, code and maths": HARD_QUESTION + "The disc has a radius. " * 400,
        "64 KB of words": words_of(0.064),
    }
    print(f"route_request, median of {repeats} (µs a decision)")
    print(f"{'prompt':<22} {'tokens':>7} {'old':>8} {'default':>8}  decision under the default")
    for label, text in prompts.items():
        tokens = count_chat_tokens([{"role": "user", "content": text}], model="gpt-4o")
        request = RouteRequest(tenant_id=1, requested_model="auto", prompt_tokens=tokens, last_user_message=text)
        times = [
            median_seconds(functools.partial(route_request, policy, request, catalog), repeats)
            for policy in (fixed, scored)
        ]
        explanation = route_request(scored, request, catalog).explanation
        print(f"{label:<22} {tokens:>7} {times[0] * 1e6:>8.1f} {times[1] * 1e6:>8.1f}  {explanation}")


def bench_caps(repeats: int) -> None:
    from routing.caps import TokenCapExceeded, apply_token_caps, cap_refusal_before_counting
    from routing.catalog import ModelCatalog, TenantAccess
    from routing.policy import RouteRequest, compile_policy, route_request
    from routing.services import default_policy_document
    from routing.tokens import count_chat_tokens

    catalog = ModelCatalog(models={}, access_by_tenant={1: TenantAccess("small", frozenset({"small", "large"}))})
    document = default_policy_document(small_model="small", large_model="large")
    policies = {
        "old": compile_policy(old_template(document), version=1),
        "default": compile_policy(document, version=1),
    }
    conversations = {
        "chat, 30 turns": long_chat(30),
        "chat, 150 turns": long_chat(150),
        "one message, 120 KB": [{"role": "user", "content": words_of(0.12)}],
        "one message, 0.5 MB": [{"role": "user", "content": words_of(0.5)}],
        "one message, 4 MB": [{"role": "user", "content": words_of(4)}],
        "one message, 7.8 MB": [{"role": "user", "content": words_of(7.8)}],
    }

    def planned(messages: list[dict], template: str) -> str:
        """Refuse by length, or count, route and cap, as the gateway plans a request (no summarizer)."""
        policy = policies[template]
        if cap_refusal_before_counting(policy, messages, requested_model="auto") is not None:
            return "refused uncounted"
        tokens = count_chat_tokens(messages, model="gpt-4o")
        request = RouteRequest(
            tenant_id=1, requested_model="auto", prompt_tokens=tokens, last_user_message=messages[-1]["content"]
        )
        decision = route_request(policy, request, catalog)
        try:
            result = asyncio.run(
                apply_token_caps({"messages": messages}, decision=decision, model="gpt-4o", prompt_tokens=tokens)
            )
        except TokenCapExceeded:
            return f"{tokens} tokens, refused by {decision.rule_name}"
        return f"{tokens} -> {result.prompt_tokens_after} tokens"

    print(f"\nrefuse by length or count, route and cap, median of {repeats} (ms)")
    print(f"{'prompt':<22} {'old':>9} {'default':>9}  under the old template | under the default")
    for label, messages in conversations.items():
        times = [median_seconds(functools.partial(planned, messages, template), repeats) for template in policies]
        outcomes = " | ".join(planned(messages, template) for template in policies)
        print(f"{label:<22} {times[0] * 1e3:>9.1f} {times[1] * 1e3:>9.1f}  {outcomes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routing-repeats", type=int, default=2000)
    parser.add_argument("--caps-repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    bench_routing(args.routing_repeats)
    bench_caps(args.caps_repeats)


if __name__ == "__main__":
    main()
