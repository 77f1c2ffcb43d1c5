"""Image decoding and validation: every accepted form, and every way an image can be bad."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from agent.core.errors import ImageError, InputError
from agent.core.images import DEFAULT_MAX_PIXELS, ImageLocation, image_name, load_image


def png_bytes(size=(20, 10), color="red", mode="RGB", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def png_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "cat.png"
    path.write_bytes(png_bytes())
    return path


def _check(image):
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (20, 10)


def test_pil_image_is_converted_to_rgb():
    image = load_image(Image.new("RGBA", (20, 10), (0, 0, 255, 128)))
    _check(image)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "CMYK", "1"])
def test_other_modes_become_rgb(mode):
    _check(load_image(Image.new(mode, (20, 10))))


def test_bytes(png_file):
    _check(load_image(png_file.read_bytes()))


def test_base64_text():
    _check(load_image(base64.b64encode(png_bytes()).decode()))


def test_urlsafe_base64_text():
    _check(load_image(base64.urlsafe_b64encode(png_bytes(color="blue")).decode()))


def test_data_url():
    _check(load_image("data:image/png;base64," + base64.b64encode(png_bytes()).decode()))


def test_jpeg_data_url():
    data = base64.b64encode(png_bytes(fmt="JPEG")).decode()
    _check(load_image(f"data:image/jpeg;base64,{data}"))


def test_local_path_str_pathlike_and_file_url(png_file):
    _check(load_image(str(png_file)))
    _check(load_image(png_file))
    _check(load_image(png_file.as_uri()))


def test_remote_url_refused_unless_allowed():
    with pytest.raises(ImageError, match="message 3, block 1.*remote image.*allow_remote_images"):
        load_image("https://example.com/cat.png", location=ImageLocation(3, 1))


def test_a_path_no_file_system_takes_is_an_image_error_not_an_os_error(tmp_path):
    from agent.core.files import check_readable_file

    long = str(tmp_path / ("a" * 300 + ".png"))
    with pytest.raises(ImageError, match=r"message 1, block 0: image path '.*\.\.\.' cannot be checked \(File name too long\)"):
        load_image(long, location=ImageLocation(1, 0))
    with pytest.raises(InputError, match=r"file '.*aaa\.\.\.a+\.png \(\d+ characters\)' cannot be checked \(File name too long\); "
                                         r"give the path of an existing file under"):
        check_readable_file(long, [tmp_path])
    with pytest.raises(InputError, match=r"nope\.png' does not exist"):
        check_readable_file(tmp_path / "nope.png", [tmp_path])


def test_a_file_that_is_no_image_is_named_without_pil_internals(tmp_path):
    import io

    from agent.core.images import open_image_file

    with pytest.raises(ImageError) as info:
        open_image_file(io.BytesIO(b"print('not a picture')\n"), label="notes.py")
    assert str(info.value).startswith("file 'notes.py' is not a readable image in a supported format; give a")
    assert "BytesIO" not in str(info.value) and "0x" not in str(info.value)


def test_missing_file_names_location(tmp_path):
    with pytest.raises(ImageError, match=r"message 0, block 2: image file .*nope\.png.* does not exist"):
        load_image(str(tmp_path / "nope.png"), location=ImageLocation(0, 2))


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("empty", [b"", "", "   "])
def test_empty_image(empty):
    with pytest.raises(ImageError, match="message 1, block 0: .*empty"):
        load_image(empty, location=ImageLocation(1, 0))


def test_empty_data_url():
    with pytest.raises(ImageError, match="empty"):
        load_image("data:image/png;base64,")


def test_corrupt_image_truncated():
    data = png_bytes(size=(64, 64))
    with pytest.raises(ImageError, match="message 2, block 5: .*(corrupt|truncated)"):
        load_image(data[: len(data) // 2], location=ImageLocation(2, 5))


def test_not_an_image():
    with pytest.raises(ImageError, match="not an image in a supported format"):
        load_image(b"hello, this is text and not a picture at all", location=ImageLocation(0, 0))


def test_invalid_base64():
    with pytest.raises(ImageError, match="neither valid base64 nor an existing file"):
        load_image("QUJD" * 10 + "=" + "QUJD" * 2)


def test_text_that_is_neither_path_nor_base64():
    with pytest.raises(ImageError, match="does not exist"):
        load_image("a picture of my cat!")


def test_unsupported_mime_type():
    with pytest.raises(ImageError, match="message 4, block 1: mime type 'application/pdf' is not an image"):
        load_image(
            base64.b64encode(png_bytes()).decode(), mime_type="application/pdf", location=ImageLocation(4, 1)
        )


def test_unsupported_data_url_type():
    with pytest.raises(ImageError, match="not an image"):
        load_image("data:text/plain;base64," + base64.b64encode(b"hi").decode())


def test_unsupported_format(tmp_path):
    # PDF is a format PIL can write but our loader does not accept
    path = tmp_path / "page.pdf"
    Image.new("RGB", (10, 10)).save(path, "PDF")
    with pytest.raises(ImageError, match="not (supported|an image)"):
        load_image(path)


def test_unsupported_url_scheme():
    with pytest.raises(ImageError, match="scheme 'ftp'"):
        load_image("ftp://example.com/cat.png")


def test_unsupported_python_type():
    with pytest.raises(ImageError, match="of type int is not supported"):
        load_image(42)


def test_decompression_bomb_refused_before_decoding():
    # 8000 x 7000 = 56 MP, compressed to a few KB: refused from its header alone.
    bomb = png_bytes(size=(8000, 7000), mode="1", color=0)
    assert len(bomb) < 100_000
    with pytest.raises(
        ImageError, match=r"message 1, block 3: .*56,000,000 pixels.*50,000,000.*decompression bomb"
    ):
        load_image(bomb, location=ImageLocation(1, 3))


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageError, match="over the limit of 100"):
        load_image(png_bytes(), max_pixels=100)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_image_error_is_an_input_error():
    assert issubclass(ImageError, InputError)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/data/cats/cat.png", "cat.png"),
        ("https://example.com/a/dog.jpg?x=1", "dog.jpg"),
        ("file:///tmp/bird.webp", "bird.webp"),
        ("data:image/png;base64,AAAA", None),
        (base64.b64encode(b"x" * 60).decode(), None),
        (
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg/x",
            None,
        ),
        (Path("/x/y/z.png"), "z.png"),
    ],
)
def test_image_name(source, expected):
    assert image_name(source) == expected


def test_long_base64_text_is_not_taken_for_a_path():
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 64).convert("RGB").save(buffer, "PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    assert 256 < len(text) < 4096 * 4
    assert load_image(text).size == (64, 48)
