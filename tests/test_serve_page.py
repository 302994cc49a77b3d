"""`z2h serve`'s chat page in headless Chromium (Debian's package, driven by Playwright through its
executable path): a typed message streams its reply into the page, the next one is asked with the
whole conversation, and reset starts over. Replies are checked against the API's own greedy answers."""

from __future__ import annotations

import time

import pytest
from sft_tiny import VOCAB, tokenizer

from stages.common.model import GPTConfig, build
from use.batching import Engine
from use.serve import create_app, serving

MODEL = "tiny"
MAX_TOKENS = 12
# Every text the reply bubble shows, so the test can tell a streamed reply from one set at once.
RECORD_BUBBLES = """
window.shown = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll(".assistant");
  if (bubbles.length) window.shown.push(bubbles[bubbles.length - 1].textContent);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.fixture(scope="module")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    import browser

    path, why = browser.chromium(install_missing=True)
    if path is None:
        pytest.skip(f"chat page browser test: {why}; install Chromium or set Z2H_CHROMIUM to run it")
    return path


def test_the_chat_page_streams_replies_keeps_the_conversation_and_resets(chromium_path):
    import openai
    from playwright.sync_api import sync_playwright

    model = build(GPTConfig(vocab_size=VOCAB, seq_len=128, n_layer=2, n_head=4, d_model=64), seed=5).eval()
    model.register_forward_hook(lambda *_: time.sleep(0.05))  # tokens far enough apart to arrive one by one
    app = create_app(Engine(model, max_batch=2), tokenizer(), MODEL)
    with serving(app) as url, sync_playwright() as playwright:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")

        def greedy(messages: list[dict]) -> str:
            reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
            return reply.choices[0].message.content

        chrome = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        page = chrome.new_page()
        page.add_init_script(RECORD_BUBBLES)
        page.goto(url)
        page.wait_for_function(f"document.getElementById('model').textContent === {MODEL!r}")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", str(MAX_TOKENS))

        def say(text: str, replies: int) -> str:
            page.fill("#input", text)
            page.press("#input", "Enter")
            done = f"document.querySelectorAll('.assistant').length === {replies}"
            page.wait_for_function(f"document.body.dataset.busy === 'false' && {done}")
            return page.locator(".assistant").last.text_content()

        first = say("What is 2 + 3?", replies=1)
        conversation = [{"role": "user", "content": "What is 2 + 3?"}]
        assert first == greedy(conversation) and first.strip()
        shown = page.evaluate("window.shown")
        assert len({text for text in shown if text and text != first}) >= 2  # grew piece by piece

        second = say("And then?", replies=2)
        conversation += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
        assert second == greedy(conversation)  # asked with the whole conversation
        assert page.locator(".user").all_text_contents() == ["What is 2 + 3?", "And then?"]

        page.click("#reset")
        assert page.locator("#log .msg").count() == 0
        assert say("What is 2 + 3?", replies=1) == first  # a fresh conversation again
        assert page.locator(".note").count() == 0
        chrome.close()
