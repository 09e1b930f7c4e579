"""The admin console in a real browser (Debian's headless Chromium driven by Playwright) against
`teambot serve` as a real process: sign in, upload, see it indexed, re-index, ask, see sources,
a wrong token refused."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bot.answer_log import AnswerLog
from bot.core import AnswerDone
from config.settings import Settings
from inference.client import Endpoint
from tests.conftest import make_settings
from tests.proc import TEAMBOT_CMD, process_env

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_TOKEN = "browser-test-token-7c1d"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 120_000  # every wait: Playwright actions and `expect` (whose own default is 5 s)
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def console_url(indexed_settings: Settings, llamacpp_endpoint: Endpoint, tmp_path: Path) -> AsyncIterator[str]:
    data = Path(shutil.copytree(indexed_settings.data_dir, tmp_path / "data"))
    settings = make_settings(data, indexed_settings.rag.knowledge_dir)
    env = process_env(
        settings, TEAMBOT_INFERENCE__BACKEND="external", TEAMBOT_INFERENCE__BASE_URL=llamacpp_endpoint.base_url, TEAMBOT_ADMIN_TOKEN=ADMIN_TOKEN
    )
    process = await asyncio.create_subprocess_exec(
        *TEAMBOT_CMD, "serve", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    seen = []
    try:
        async with asyncio.timeout(180):
            while not (match := re.search(r"Admin console at (http://\S+/admin)", "".join(seen))):
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise AssertionError("teambot serve ended before its console was up:\n" + "".join(seen))
                seen.append(line)
        drain = asyncio.create_task(process.stderr.read())
        yield match.group(1)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
        assert process.returncode == 0
        rest = await drain
        assert ADMIN_TOKEN.encode() not in rest and ADMIN_TOKEN not in "".join(seen)
        assert ADMIN_TOKEN not in (data / "logs" / "teambot.log").read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(url)
    await page.fill("#password", token)
    await page.click("#login-form button[type=submit]")


async def test_sign_in_upload_index_ask_and_a_wrong_token(browser: Browser, console_url: str, tmp_path: Path) -> None:
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log = AnswerLog(AnswerLog.database(None, tmp_path / "data"))  # an answer given in Slack, with the model's search queries
    done = AnswerDone("In the basement bike room [1].", [], [1], True, mode="generative", reason="the grounding guard accepted it: every sentence, "
                      "number and name is in the cited passages", searched=["bike storage location", "自行车存放位置"])  # fmt: skip
    slack_answer = log.record("slack", "C1", "1.0", "U1", "Where do bikes go?", done)
    log.close()

    await sign_in(page, console_url, "not-the-token")
    await expect(page.locator("#login-error")).to_contain_text("wrong admin token")
    await expect(page.locator("#console-view")).to_be_hidden()

    await sign_in(page, console_url, ADMIN_TOKEN)
    await expect(page.locator("#console-view")).to_be_visible()
    await expect(page.locator("#documents tr[data-path='oncall-guide.md']")).to_be_visible()
    recent = page.locator(f"#recent tr[data-id='{slack_answer}']")  # how it was made and what was searched, for an admin reading a 👎
    await expect(recent).to_contain_text("Where do bikes go?searched: bike storage location · 自行车存放位置")
    await expect(recent.locator("td.how")).to_have_text("generative")
    await expect(recent.locator("td.how")).to_have_attribute("title", re.compile("the grounding guard accepted it"))

    doc = tmp_path / "bike-storage.md"
    doc.write_text("# Bike storage\n\nBicycles go in the basement bike room, behind the blue door. The door code is 4711.\n")
    bad = tmp_path / "notes.exe"
    bad.write_bytes(b"MZ\x90\x00")
    await page.fill("#collection", "facilities")
    await page.set_input_files("#files", [str(doc), str(bad)])
    await page.click("#upload-form button[type=submit]")
    await expect(page.locator("#upload-results li.ok")).to_have_text("bike-storage.md: added in facilities, 1 chunks indexed")
    await expect(page.locator("#upload-results li.error")).to_contain_text("notes.exe: teambot cannot read '.exe'")
    row = page.locator("#documents tr[data-path='bike-storage.md'][data-collection='facilities']")
    await expect(row).to_contain_text("indexed")
    await expect(row.locator("td").nth(2)).to_have_text("1")

    await page.click("#reindex")
    await expect(page.locator("#reindex-message")).to_contain_text("Re-index")
    await expect(page.locator("#runs tr").first).to_have_attribute("data-state", "done")
    await expect(page.locator("#runs tr").first).to_contain_text("console")

    await page.fill("#question", "What is the door code of the bike room?")
    await page.fill("#ask-collections", "facilities")
    await page.click("#ask-form button[type=submit]")
    await expect(page.locator("#answer")).to_have_attribute("data-done", "true")
    assert (await page.locator("#answer").inner_text()).strip()
    await expect(page.locator("#sources li.source").first).to_contain_text("facilities/bike-storage.md")
    await expect(page.locator("#sources li.source").first).to_contain_text(re.compile(r"score \d\.\d\d \(vector"))

    await page.click("#logout")
    await expect(page.locator("#login-view")).to_be_visible()
    await page.reload()
    await expect(page.locator("#login-view")).to_be_visible()  # the session ended with the sign-out
