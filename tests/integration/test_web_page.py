"""The chat page in a real headless browser: Debian's Chromium driven by Playwright, two real servers.

* a keyless loopback server (one caller) whose agent must call ``generate_image`` first (tiny
  Stable Diffusion): a message with a pasted image, streamed text, the generated image loaded,
  a conversation seeded beforehand with hostile text (reply, tool arguments, result, a search
  caption) shown as text, reload, rename, delete;
* a server with an API key whose agent must call ``speak`` first and may then write a long
  reply: the key prompt, the audio element's source loaded, the Stop button ending the reply.

* a server run in this process whose agent is scripted (a random model cannot write the path of
  the attached video) and calls the real ``describe_video`` (tiny BLIP) and ``generate_video``
  (tiny CogVideoX): videos picked, pasted and dropped into the message box are uploaded, a
  refused one says why, the contact sheet loads and the generated MP4 plays inline, also after
  a reload.

Screenshots of the main states (desktop and a 390 px phone) go to ``test-output/web/``.
Playwright's own browser downloads are never used: the system's Chromium runs the page.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.serve_process import free_port, start_server, wait_until_ready
from tests.tiny_models import build_tiny_llava, endless_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "web"
KEY = "web-test-key-" + "k" * 20
HOSTILE = '<img src=x onerror="window.__pwned=1">'
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    given = os.environ.get("LLAVA_AGENT_CHROMIUM")
    if given:
        return given
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def png_bytes(size=(48, 40), colour=(220, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _config(root: Path, model: Path, tools: str, agent: str, max_new_tokens: int) -> Path:
    data_dir, images_dir = root / "data", root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n'
        f'[model]\nmodel = "{model}"\ndevice = "cpu"\ntemperature = 0.0\nmax_new_tokens = {max_new_tokens}\n'
        f'[tools]\ndevice = "cpu"\nallowed_dirs = ["{images_dir}", "{data_dir}"]\n{tools}\n'
        f"[agent]\nlong_term_memory = false\nrecursion_limit = 3\n{agent}\n"
    )
    return config


def _seed_hostile_thread(config_path: Path, image: Path) -> str:
    """A conversation written by the agent (scripted model) whose every text is markup, plus a search hit."""
    from langchain_core.messages import AIMessage
    from langchain_core.tools import StructuredTool

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from tests.scripted_chat_model import ScriptedChatModel, tool_call

    def lookup(query: str) -> tuple[str, dict]:
        """Look something up."""
        return f"found {HOSTILE}", {"results": [{"path": str(image), "score": 0.913, "caption": HOSTILE}]}

    tool = StructuredTool.from_function(lookup, name="lookup", response_format="content_and_artifact")
    model = ScriptedChatModel(replies=[AIMessage("", tool_calls=[tool_call("lookup", {"query": HOSTILE})]),
                                       f"Here it is: {HOSTILE}"])  # fmt: skip
    kept = os.environ.pop("LLAVA_AGENT_DATA_DIR", None)  # the server's config file decides, as for the server
    try:
        config = load_config(config_path, overrides={"agent": {"tool_choice": None}})
    finally:
        if kept is not None:
            os.environ["LLAVA_AGENT_DATA_DIR"] = kept
    agent = MultimodalAgent(model, [tool], config=config)
    try:
        return agent.chat(HOSTILE).thread_id
    finally:
        agent.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (install Debian's chromium: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_llava_qwen2):
    """(keyless server url, its folder, keyed server url): both started at once, the hostile thread seeded first."""
    from tests.tool_models import build_stable_diffusion

    root = tmp_path_factory.mktemp("web")
    sd = build_stable_diffusion(root / "sd")
    # the agent's prompt (system, tool schemas, a pasted image, then the tool's result with its
    # path) nearly fills the fixtures' 2,048 positions, and temporary paths differ in length from
    # run to run: these agents get a checkpoint with room to spare
    roomy = build_tiny_llava(root / "llava-tiny-qwen2-4k", "qwen2", context=4096)
    local = _config(root / "local", roomy, f'enabled = ["generate_image"]\nimage_model = "{sd}"\nimage_steps = 1\nimage_max_steps = 2\nimage_max_side = 128',
                    'tool_choice = "generate_image"', 96)  # fmt: skip
    hit = root / "local" / "images" / "hit.png"
    hit.write_bytes(png_bytes((64, 64), (20, 120, 220)))
    hostile_thread = _seed_hostile_thread(local, hit)
    keyed = _config(root / "keyed", roomy, 'enabled = ["speak"]\nspeak_voices = ["en", "fr"]',
                    'tool_choice = "speak"', 96)  # fmt: skip
    # no tools, and a copy of the model that never ends by itself: the reply runs its 1200 tokens
    # (the random model would end it early for some prompts), so Stop always has a reply to stop
    endless = endless_copy(tiny_llava_qwen2, root / "endless-model")
    plain = _config(root / "plain", endless, "enabled = []", "", 1200)
    ports = free_port(), free_port(), free_port()
    logs = root / "local.log", root / "keyed.log", root / "plain.log"
    processes = [start_server(local, ports[0], logs[0]), start_server(keyed, ports[1], logs[1], "--api-key", KEY),
                 start_server(plain, ports[2], logs[2])]  # fmt: skip
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for process, url, log in zip(processes, urls, logs, strict=True):
            wait_until_ready(process, url, log)
        yield {"local": urls[0], "keyed": urls[1], "plain": urls[2], "hostile_thread": hostile_thread, "root": root}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _no_injected_markup(page) -> None:
    assert page.evaluate("window.__pwned") is None
    assert page.locator('img[src="x"]').count() == 0


def test_chat_with_an_image_tool_history_and_hostile_text(browser, servers):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(servers["local"] + "/")
    expect = pytest.importorskip("playwright.sync_api").expect
    # the seeded conversation (made outside the server, as the terminal chat would) is listed, title as text
    first = page.locator("#thread-list li").first
    expect(first.locator(".open")).to_have_text(HOSTILE)

    # a message with an attached image whose file name is markup
    page.set_input_files("#attach", files=[{"name": f"{HOSTILE}.png", "mimeType": "image/png", "buffer": png_bytes()}])
    expect(page.locator("#attachments li .name")).to_have_text(f"{HOSTILE}.png")
    page.fill("#prompt", "Draw a red square")
    page.press("#prompt", "Enter")
    expect(page.locator("#stop")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "prompt"  # focus stays in the box
    reply = page.locator(".msg.assistant").last
    card = reply.locator(".tool-call[data-tool=generate_image]")
    expect(card.locator(".tool-state")).to_have_text(re.compile(r"done in \d"), timeout=60_000)
    image = card.locator("img.artifact")
    expect(image).to_have_count(1)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=20_000)
    expect(page.locator("#send")).to_be_visible(timeout=60_000)  # the turn is over
    streamed = reply.locator(".text").text_content()  # what the random model wrote after the call (maybe nothing)
    user = page.locator(".msg.user").last
    expect(user.locator("img")).to_have_attribute("alt", f"{HOSTILE}.png")
    _shot(page, "desktop-image-reply")

    # reload: the conversation is in the list and opens with its image
    page.reload()
    expect(page.locator("#thread-list li")).to_have_count(2)
    page.locator("#thread-list .open", has_text="Draw a red square").click()
    expect(page.locator("#thread-title")).to_have_text("Draw a red square")
    restored = page.locator(".tool-call[data-tool=generate_image] img.artifact")
    expect(restored).to_have_count(1)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=restored.element_handle(), timeout=20_000)
    expect(page.locator(".msg.assistant .text").first).to_have_text(streamed)

    # the hostile conversation: reply, tool arguments, tool result and search caption are all text
    page.locator("#thread-list .open", has_text="<img").click()
    expect(page.locator(".msg.user .text")).to_have_text(HOSTILE)
    expect(page.locator(".msg.assistant .text").last).to_have_text(f"Here it is: {HOSTILE}")
    expect(page.locator(".tool-call .tool-args")).to_contain_text(HOSTILE.replace('"', '\\"'))
    expect(page.locator(".tool-call .tool-result")).to_have_text(f"found {HOSTILE}")
    grid = page.locator(".thumb-grid figure")
    expect(grid).to_have_count(1)
    expect(grid.locator("figcaption")).to_contain_text(HOSTILE)
    expect(grid.locator(".score")).to_have_text("0.913")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                           arg=grid.locator("img").element_handle(), timeout=20_000)  # fmt: skip
    _no_injected_markup(page)
    _shot(page, "desktop-hostile-text-and-search-grid")

    # the tools panel lists what the agent can call
    page.click("#open-tools")
    expect(page.locator("#tools-list .tool-name")).to_have_text(["generate_image"])
    page.click("#tools-dialog .close-dialog")

    # rename and delete through the list
    item = page.locator("#thread-list li", has_text="Draw a red square")
    item.get_by_role("button", name="Rename Draw a red square").click()
    page.fill("#thread-list input", "Renamed square")
    page.press("#thread-list input", "Enter")
    expect(page.locator("#thread-list .open", has_text="Renamed square")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#thread-list li", has_text="Renamed square").get_by_role("button", name="Delete Renamed square").click()
    expect(page.locator("#thread-list li")).to_have_count(1)

    # a phone-width window
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#thread-list .open").first).not_to_be_in_viewport()  # the list is a closed drawer
    page.click("#toggle-threads")
    expect(page.locator("#toggle-threads")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#thread-list .open").first).to_be_in_viewport()
    page.wait_for_timeout(300)  # the drawer's slide
    _shot(page, "phone-390-conversations-list")
    page.locator("#thread-list .open").first.click()  # picking a conversation opens it and closes the drawer
    expect(page.locator(".thumb-grid figure")).to_have_count(1)
    expect(page.locator("#threads")).not_to_have_class(re.compile(r"\bopen\b"))
    expect(page.locator("#toggle-threads")).to_have_attribute("aria-expanded", "false")
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
    _shot(page, "phone-390-conversation")
    assert not errors, errors
    page.close()


def test_api_key_prompt_and_speech(browser, servers):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    expect = pytest.importorskip("playwright.sync_api").expect
    page.goto(servers["keyed"] + "/")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", "wrong-key-" + "w" * 20)
    page.press("#key-input", "Enter")
    expect(page.locator("#key-error")).to_have_text("That key was not accepted.")
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    expect(page.locator("#key-dialog")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('llava-agent-api-key')") == KEY

    page.fill("#prompt", "Read this aloud please")
    page.click("#send")
    reply = page.locator(".msg.assistant").last
    audio = reply.locator("audio")
    expect(audio).to_have_count(1, timeout=60_000)
    page.wait_for_function("(a) => a.src.startsWith('blob:') && a.readyState >= 1", arg=audio.element_handle(),
                           timeout=20_000)  # fmt: skip
    assert page.evaluate("(a) => a.duration", audio.element_handle()) > 0  # the WAV's header and samples were read
    expect(reply.locator(".tool-call .tool-state")).to_have_text(re.compile(r"done in \d"))
    expect(page.locator("#send")).to_be_visible(timeout=60_000)
    _shot(page, "desktop-speech")

    # the key stays for this tab's session: a reload does not ask again and finds the thread
    page.reload()
    expect(page.locator("#thread-list li")).to_have_count(1)
    expect(page.locator("#key-dialog")).to_be_hidden()
    page.click("#open-memory")
    expect(page.locator("#memory-note")).to_contain_text("long-term memory is off")
    assert not errors, errors
    context.close()


def test_streamed_reply_with_an_image_stops_with_the_stop_button(browser, servers):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    expect = pytest.importorskip("playwright.sync_api").expect
    page.goto(servers["plain"] + "/")
    expect(page.locator("#threads-empty")).to_be_visible()
    page.set_input_files("#attach", files=[{"name": "red.png", "mimeType": "image/png", "buffer": png_bytes()}])
    page.fill("#prompt", "Tell me a long story about this picture")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.user img")).to_have_attribute("alt", "red.png")
    reply = page.locator(".msg.assistant").last
    text = reply.locator(".text")
    expect(text).not_to_be_empty(timeout=60_000)
    started = time.monotonic()
    # at once, as the user's click: a fast machine writes the 1200 tokens in seconds, and page.click
    # would first wait for the button to stop moving, which it does only when the stream has ended
    page.locator("#stop").dispatch_event("click")
    expect(reply.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()
    _shot(page, "desktop-streaming-stopped")
    assert page.evaluate("document.activeElement.id") == "prompt"
    # the server stops the turn (the client left), well before its 1200 tokens
    deadline = time.monotonic() + 30
    while httpx.get(servers["plain"] + "/health", timeout=5).json()["requests"]["cancelled"] < 1:
        assert time.monotonic() < deadline, "the server never saw the reply cancelled"
        time.sleep(0.2)
    assert time.monotonic() - started < 30
    _shot(page, "desktop-stopped")
    page.reload()
    expect(page.locator("#thread-list .open")).to_have_text(["Tell me a long story about this picture"])
    page.locator("#thread-list .open").click()
    expect(page.locator(".msg.user img")).to_have_count(1)
    assert not errors, errors
    page.close()


# -- videos ------------------------------------------------------------------------------------
ATTACHED_VIDEO = re.compile(r"\[attached video: (.+)\]")
CLIP = {"frames": 9, "width": 48, "height": 32, "steps": 2, "fps": 4}


def _video_script(messages):
    """The scripted agent: describe an attached video, else make a clip; after a tool, say which one ran."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from tests.scripted_chat_model import tool_call

    if isinstance(messages[-1], ToolMessage):
        return f"{messages[-1].name} is done."
    human = [m for m in messages if isinstance(m, HumanMessage)][-1]
    found = ATTACHED_VIDEO.search(human.text)
    if found:
        return AIMessage("", tool_calls=[tool_call("describe_video", {"video": found.group(1)})])
    return AIMessage("", tool_calls=[tool_call("generate_video", {"prompt": "a paper boat on a pond", **CLIP})])


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    """A keyless server in this process: scripted agent, real describe_video and generate_video on tiny models."""
    pytest.importorskip("av")
    import uvicorn

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from agent.core.model_manager import ModelManager
    from agent.serve.app import create_app
    from agent.serve.security import ApiKeys
    from tests.scripted_chat_model import ScriptedChatModel
    from tests.tool_models import build_blip
    from tests.video_3d_models import build_cogvideox
    from tests.videos import write_video
    from tools.describe_video import DescribeVideoTool
    from tools.generate_video import GenerateVideoTool

    root = tmp_path_factory.mktemp("web-video")
    config = load_config({"data_dir": str(root / "data"), "agent": {"long_term_memory": False}},
                         environ={})  # its own data folder, not the session's shared one  # fmt: skip
    manager = ModelManager()
    tools = [
        DescribeVideoTool(caption_model=str(build_blip(root / "blip")), device="cpu", allowed_dirs=[config.data_dir],
                          artifacts_dir=config.artifacts_dir, manager=manager, max_frames=3, describe_with="captions"),
        GenerateVideoTool(model=str(build_cogvideox(root / "cogvideox")), device="cpu", allow_cpu=True,
                          artifacts_dir=config.artifacts_dir, manager=manager),
    ]  # fmt: skip
    agent = MultimodalAgent(ScriptedChatModel(replies=[_video_script]), tools, config=config)
    app = create_app(config, keys=ApiKeys(), build_agent=lambda: agent, load_on_start=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="video-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    clip = write_video(root / "party.mp4", (("red", 1.0), ("blue", 1.0)), fps=5)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "clip": clip.read_bytes()}
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        agent.close()


def _media_loaded(page, element, timeout: int = 20_000) -> None:
    page.wait_for_function("(v) => v.src.startsWith('blob:') && v.readyState >= 1 && v.videoWidth > 0",
                           arg=element.element_handle(), timeout=timeout)  # fmt: skip


def _image_loaded(page, element, timeout: int = 20_000) -> None:
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=element.element_handle(), timeout=timeout)


def test_videos_picked_pasted_and_dropped_reach_the_agent_and_generated_videos_play(browser, video_server):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    expect = pytest.importorskip("playwright.sync_api").expect
    page.goto(video_server["url"] + "/")
    # the tools route says this agent reads videos: the picker, the hint and the label follow
    expect(page.locator("#attach")).to_have_attribute("accept", "image/*,video/*")
    expect(page.locator("#drop-hint")).to_have_text("Paste or drop images or videos here.")

    # picked: a picture renamed .mp4 is refused by the server, and the page says why
    page.set_input_files("#attach", files=[{"name": "fake.mp4", "mimeType": "video/mp4", "buffer": png_bytes()}])
    expect(page.locator("#status")).to_contain_text("fake.mp4: file 'fake.mp4' is an image, not a video")
    expect(page.locator("#attachments li")).to_have_count(0)

    # pasted and dropped: a real H.264 clip; the second chip is removed again
    clip = base64.b64encode(video_server["clip"]).decode()
    deliver = """([kind, name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "video/mp4" }));
        if (kind === "paste") document.getElementById("prompt").dispatchEvent(
            new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
        else document.getElementById("composer").dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }"""
    page.evaluate(deliver, ["paste", f"{HOSTILE}.mp4", clip])
    chip = page.locator("#attachments li.video").first
    expect(chip).to_have_attribute("data-state", "ready", timeout=20_000)
    expect(chip.locator(".name")).to_have_text(f"{HOSTILE}.mp4")
    expect(chip.locator(".detail")).to_have_text("0:02")
    page.evaluate(deliver, ["drop", "dropped.mp4", clip])
    expect(page.locator("#attachments li.video")).to_have_count(2)
    page.get_by_role("button", name="Remove dropped.mp4").click()
    expect(page.locator("#attachments li.video")).to_have_count(1)
    page.fill("#prompt", "What happens in this video?")
    _shot(page, "desktop-video-attached")
    page.press("#prompt", "Enter")
    sent = page.locator(".msg.user").last.locator(".attached-video video")
    expect(sent).to_have_count(1)
    reply = page.locator(".msg.assistant").last
    card = reply.locator(".tool-call[data-tool=describe_video]")
    expect(card.locator(".tool-state")).to_have_text(re.compile(r"done in \d"), timeout=60_000)
    expect(card.locator(".tool-result")).to_contain_text("Timeline of video")
    sheet = card.locator("img.artifact")
    expect(sheet).to_have_count(1)
    _image_loaded(page, sheet)
    expect(reply.locator(".text")).to_have_text("describe_video is done.", timeout=20_000)
    expect(page.locator("#send")).to_be_visible()

    # a generated MP4 plays inline, its contact sheet as the poster and below it
    page.fill("#prompt", "Make a short clip of a paper boat")
    page.press("#prompt", "Enter")
    made = page.locator(".msg.assistant").last.locator(".tool-call[data-tool=generate_video]")
    expect(made.locator(".tool-state")).to_have_text(re.compile(r"done in \d"), timeout=60_000)
    player = made.locator("video.artifact")
    _media_loaded(page, player)
    assert page.evaluate("(v) => [v.videoWidth, v.videoHeight]", player.element_handle()) == [48, 32]
    page.wait_for_function("(v) => v.poster.startsWith('blob:')", arg=player.element_handle(), timeout=20_000)
    _image_loaded(page, made.locator("img.contact-sheet"))
    expect(page.locator("#send")).to_be_visible(timeout=20_000)
    _shot(page, "desktop-video")

    # reload: the attached video plays from the thread's history, the generated one too
    page.reload()
    page.locator("#thread-list .open", has_text="What happens in this video?").click()
    kept_name = re.compile(r"^img_src_x_onerror_window\.__pwned_1\.mp4$")  # the server keeps a clean name
    expect(page.locator(".msg.user .attached-video figcaption")).to_have_text(kept_name)
    _media_loaded(page, page.locator(".msg.user .attached-video video"))
    _image_loaded(page, page.locator(".tool-call[data-tool=describe_video] img.artifact"))
    _media_loaded(page, page.locator(".tool-call[data-tool=generate_video] video.artifact"))
    _no_injected_markup(page)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # players and sheets fit a phone
    _shot(page, "phone-390-video")
    assert not errors, errors
    page.close()
