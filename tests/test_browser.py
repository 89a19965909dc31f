"""A real browser (Debian's chromium, driven by Playwright) uploads a picture, asks, and sees the answer."""
import shutil
from pathlib import Path

import pytest
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def ask_about_picture(page, url: str, picture: Path, question: str) -> None:
    page.goto(url, wait_until="load")
    page.locator("input[type=file]").first.set_input_files(str(picture))
    page.locator("[data-testid=bot]").first.wait_for(timeout=60_000)  # the description arrives
    box = page.get_by_placeholder("Ask about the picture, then press Enter")
    box.fill(question)
    box.press("Enter")
    page.locator("[data-testid=bot]").nth(1).wait_for(timeout=60_000)


def test_upload_ask_and_see_the_streamed_answer(browser, app, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(picture)
    page = browser.new_page()
    ask_about_picture(page, app, picture, "What colour is it?")
    bubbles = page.locator("[data-testid=bot]")
    assert bubbles.count() == 2 and bubbles.nth(1).inner_text().strip()
    assert page.locator("[data-testid=user]").filter(has_text="What colour is it?").count() == 1
    playwright.expect(page.locator(".stats").first).to_contain_text("tokens/s", timeout=60_000)  # answer done
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "image-chat.png"), full_page=True)


def test_two_browser_sessions_at_once(browser, app, tmp_path):
    pages = []
    for name, rgb in (("green", (30, 200, 30)), ("blue", (30, 30, 220))):
        picture = tmp_path / f"{name}.png"
        Image.new("RGB", (64, 64), rgb).save(picture)
        page = browser.new_context().new_page()
        page.goto(app, wait_until="load")
        page.locator("input[type=file]").first.set_input_files(str(picture))
        pages.append(page)
    for page in pages:  # both descriptions stream while the other session waits or runs
        page.locator("[data-testid=bot]").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid=bot]").count() == 1
