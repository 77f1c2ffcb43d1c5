"""OpenAI messages -> LangChain messages, and the server's image rules."""

from __future__ import annotations

import base64
import io
import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from agent.serve.inputs import ImagePolicy, agent_input, to_langchain_messages
from agent.serve.protocol import APIError


def data_url(size=(8, 6), colour=(200, 10, 10)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    Image.new("RGB", (5, 5), "blue").save(allowed / "ok.png")
    Image.new("RGB", (5, 5), "blue").save(outside / "secret.png")
    (allowed / "escape.png").symlink_to(outside / "secret.png")
    return {"allowed": allowed, "outside": outside}


@pytest.fixture
def policy(folders) -> ImagePolicy:
    return ImagePolicy(allowed_dirs=[folders["allowed"]], allow_remote=False, max_pixels=10_000, max_images=2)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_roles_tool_calls_and_images_convert(policy):
    messages = to_langchain_messages(
        [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "this?"},
                                         image_part(data_url())]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
            {"role": "user", "content": "thanks"},
        ],
        policy,
    )  # fmt: skip
    assert [type(m) for m in messages] == [SystemMessage, HumanMessage, AIMessage, ToolMessage, HumanMessage]
    image_block = messages[1].content[2]
    assert image_block["type"] == "image" and image_block["image"].size == (8, 6)
    assert messages[2].tool_calls[0]["args"] == {"x": 1} and messages[2].tool_calls[0]["id"] == "c1"
    assert messages[3].tool_call_id == "c1" and messages[3].content == "42"
    assert messages[4].content == "thanks"


def test_local_paths_only_inside_the_allowed_folders(policy, folders):
    inside = to_langchain_messages([{"role": "user", "content": [image_part(str(folders["allowed"] / "ok.png"))]}],
                                   policy)  # fmt: skip
    assert inside[0].content[0]["image"].size == (5, 5)
    as_url = to_langchain_messages([{"role": "user", "content": [image_part((folders["allowed"] / "ok.png").as_uri())]}],
                                   policy)  # fmt: skip
    assert as_url[0].content[0]["image"].size == (5, 5)
    for path in (folders["outside"] / "secret.png", folders["allowed"] / "escape.png",
                 folders["allowed"] / ".." / "outside" / "secret.png"):  # fmt: skip
        with pytest.raises(APIError) as caught:
            to_langchain_messages([{"role": "user", "content": [image_part(str(path))]}], policy)
        assert caught.value.status == 400 and caught.value.code == "path_not_allowed"
        # only the path the client sent is quoted: not where it leads, not the folders the server reads
        assert "resolves to" not in caught.value.message and "allowed_dirs" not in caught.value.message
    with pytest.raises(APIError) as caught:
        to_langchain_messages([{"role": "user", "content": [image_part(str(folders["allowed"] / "nope.png"))]}], policy)
    assert caught.value.code == "invalid_image" and "allowed_dirs" not in caught.value.message


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://example.com/cat.png", "remote_images_disabled"),
        ("ftp://example.com/cat.png", None),
        ("data:image/png;base64,AAAA", "invalid_image"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_image"),
        ("", None),
    ],
)
def test_refused_image_sources(policy, url, code):
    with pytest.raises(APIError) as caught:
        to_langchain_messages([{"role": "user", "content": [image_part(url)]}], policy)
    assert caught.value.status == 400 and caught.value.code == code


def test_pixel_and_count_limits(policy):
    with pytest.raises(APIError) as caught:
        to_langchain_messages([{"role": "user", "content": [image_part(data_url((200, 100)))]}], policy)
    assert caught.value.code == "invalid_image" and "20,000 pixels" in caught.value.message
    three = [image_part(data_url()) for _ in range(3)]
    with pytest.raises(APIError) as caught:
        to_langchain_messages([{"role": "user", "content": three}], policy)
    assert caught.value.code == "too_many_images"


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "wizard", "content": "x"}, "role 'wizard'"),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": [{"type": "input_audio"}]}, "'input_audio'"),
        ({"role": "system", "content": [image_part("data:,")]}, "only text parts"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}, "not valid JSON"),
        ({"role": "user", "content": 5}, "string or a list"),
        ("hello", "must be an object"),
    ],
)
def test_bad_messages_name_the_message(policy, message, fragment):
    with pytest.raises(APIError) as caught:
        to_langchain_messages([{"role": "user", "content": "hi"}, message], policy)
    assert caught.value.status == 400 and caught.value.message.startswith("messages[1]") and fragment in caught.value.message


def test_agent_input_takes_the_last_user_message(policy):
    turn = agent_input([{"role": "user", "content": "old"},
                        {"role": "user", "content": [{"type": "text", "text": "look"}, image_part(data_url())]}],
                       policy)  # fmt: skip
    assert turn.text == "look" and len(turn.images) == 1 and turn.images[0].path is None
    with pytest.raises(APIError, match="must be a user message"):
        agent_input([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], policy)
    with pytest.raises(APIError, match="empty"):
        agent_input([{"role": "user", "content": "  "}], policy)


def file_part(file_id) -> dict:
    return {"type": "file", "file": {"file_id": file_id}}


def test_the_agent_takes_uploaded_videos_as_file_parts_and_the_chat_model_does_not(policy):
    turn = agent_input([{"role": "user", "content": [file_part("file-a"), file_part(" file-a "), file_part("file-b")]}],
                       policy)  # fmt: skip
    assert turn.text == "" and turn.images == [] and turn.file_ids == ["file-a", "file-b"]  # repeats named once
    with pytest.raises(APIError, match="only the agent model takes files") as refused:
        to_langchain_messages([{"role": "user", "content": [file_part("file-a")]}], policy)
    assert refused.value.status == 400
    for bad in ({"type": "file"}, {"type": "file", "file": {"file_id": 5}}, file_part(""), file_part("x" * 200)):
        with pytest.raises(APIError, match="without a file id"):
            agent_input([{"role": "user", "content": [bad]}], policy)
    with pytest.raises(APIError) as too_many:
        agent_input([{"role": "user", "content": [file_part(f"file-{n}") for n in range(5)]}], policy)
    assert too_many.value.code == "too_many_videos"


@pytest.mark.parametrize(
    ("filename", "content_type", "kept"),
    [
        ("party.MP4", None, "party.mp4"),
        ("C:\\Users\\me\\clip.mov", "application/octet-stream", "clip.mov"),
        ("../../etc/passwd", "video/webm", "passwd.webm"),
        (None, "video/quicktime; codecs=avc1", "video.mov"),
        ("<script>.gif", "", "script.gif"),
    ],
)
def test_an_upload_is_kept_under_a_clean_video_name(filename, content_type, kept):
    from agent.serve.uploads import upload_name

    assert upload_name(filename, content_type) == kept


@pytest.mark.parametrize(("filename", "content_type"), [("notes.txt", "text/plain"), (None, None), ("a.png", "image/png")])
def test_an_upload_that_is_not_a_video_by_name_or_type_is_refused(filename, content_type):
    from agent.serve.uploads import upload_name

    with pytest.raises(APIError, match="not a video by its name or type") as refused:
        upload_name(filename, content_type)
    assert refused.value.status == 400 and refused.value.code == "invalid_video"


@pytest.fixture
def data_folder(folders):
    """The server's data folder, inside an allowed folder as by default, with a generated picture."""
    data = folders["allowed"] / "data"
    (data / "artifacts").mkdir(parents=True)
    Image.new("RGB", (5, 5), "green").save(data / "artifacts" / "made.png")
    (folders["allowed"] / "notes.png").write_text("not a picture")
    return data


def _image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [image_part(url)]}]


def test_a_non_image_file_is_refused_naming_the_path_sent(folders, data_folder):
    policy = ImagePolicy(allowed_dirs=[folders["allowed"]], allow_remote=False, max_pixels=10_000, max_images=2)
    sent = str(folders["allowed"] / "sub" / ".." / "notes.png")  # resolves elsewhere than it reads
    (folders["allowed"] / "sub").mkdir()
    for url in (sent, "file://" + sent):
        with pytest.raises(APIError) as caught:
            to_langchain_messages(_image_message(url), policy)
        assert caught.value.code == "invalid_image" and repr(sent) in caught.value.message
        assert str(folders["allowed"] / "notes.png") not in caught.value.message
        assert caught.value.message.startswith("message 0, block 0: ")


def test_keyed_callers_name_no_file_of_the_data_folder(folders, data_folder):
    data = data_folder
    keyless = ImagePolicy(allowed_dirs=[folders["allowed"]], allow_remote=False, max_pixels=10_000, max_images=2)
    keyed = ImagePolicy(allowed_dirs=keyless.allowed_dirs, allow_remote=False, max_pixels=10_000, max_images=2,
                        private_dirs=(data,))  # fmt: skip
    made = data / "artifacts" / "made.png"
    assert to_langchain_messages(_image_message(str(made)), keyless)[0].content[0]["image"].size == (5, 5)
    assert to_langchain_messages(_image_message(str(folders["allowed"] / "ok.png")), keyed)[0].content[0]["image"]
    messages = set()
    around = folders["allowed"] / "x" / ".." / "data"
    for path in (made, data / "artifacts" / "guessed.png", data / "serve.sqlite", around):
        with pytest.raises(APIError) as caught:
            to_langchain_messages(_image_message(path.as_uri() if path.exists() else str(path)), keyed)
        assert caught.value.code == "path_not_allowed"
        messages.add(re.sub(r"'[^']*'", "'P'", caught.value.message))
    assert len(messages) == 1  # an existing file and a missing one are refused alike: nothing is confirmed
