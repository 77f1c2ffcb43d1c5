"""The ``llava-agent`` command line: chat, one-shot questions, the image index, threads, memories, checks.

This module parses arguments and dispatches to the commands (:mod:`agent.cli.commands`); the
work happens in the library. Library errors
become one line on stderr and exit code 1 (``--verbose`` adds the traceback). Nothing heavy is
imported at module level, so ``llava-agent --help`` answers at once. When the reader of the
output goes away (``llava-agent threads list | head -1``), the command stops quietly with exit
code 141, as a command killed by ``SIGPIPE`` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from agent.cli.commands import (
    cmd_3d,
    cmd_ask,
    cmd_chat,
    cmd_config_path,
    cmd_config_show,
    cmd_doctor,
    cmd_index,
    cmd_memories,
    cmd_search,
    cmd_serve,
    cmd_threads,
    cmd_tools,
    cmd_video,
    cmd_web,
    one_line,
)
from agent.core.errors import LlavaAgentError

logger = logging.getLogger(__name__)

OUTPUT_CLOSED_EXIT = 128 + 13  # 128 + SIGPIPE: what a shell reports for a command whose reader left


def port_number(text: str) -> int:
    """An ``--port`` value: a TCP port, 0 to 65535 (0 picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a number from 1 to 65535, or 0 for a free one")
    return port


def _serve_options(parser: argparse.ArgumentParser) -> None:
    """The options `serve` and `web` share."""
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, help="port (default 8000)")
    parser.add_argument("--model", help="hub id or local folder of the chat model (overrides the config)")
    parser.add_argument("--adapter", metavar="PATH", help="folder of a LoRA adapter to apply (overrides the config)")
    parser.add_argument("--api-key", action="append", metavar="KEY", help="accept this bearer key (repeatable)")
    parser.add_argument("--model-name", help="the name clients use for the chat model (default: its id or folder name)")
    parser.add_argument("--agent-model", help="the name of the agent model (default llava-agent)")
    parser.add_argument("--no-agent", action="store_true", help="serve the chat model only")
    parser.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow browser calls from ORIGIN")
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs in requests")
    parser.add_argument("--public-url", help="the URL clients reach the server at, for file links (behind a proxy)")
    parser.add_argument("--max-batch", type=int, help="plain requests generated together when several wait (default 4; "
                        "1: one at a time)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-agent",
        description="A local multimodal agent: chat with a LLaVA model that sees your images and calls tools.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: the user config folder)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log details and show tracebacks")
    from agent.cli.routing import register_eval, register_finetune_tools
    from finetune.cli import common_options, register

    common = common_options()  # the same two options after the command name too (llava-agent chat --verbose)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", parents=[common], help="the terminal chat")
    chat.add_argument("--model", help="hub id or local folder of the chat model (overrides the config)")
    chat.add_argument("--adapter", metavar="PATH", help="folder of a LoRA adapter to apply (overrides the config)")
    chat.add_argument("--thread", metavar="ID", help="resume this conversation")
    chat.set_defaults(func=cmd_chat)

    ask = sub.add_parser("ask", parents=[common], help="ask one question and print the answer")
    ask.add_argument("message")
    ask.add_argument("--image", action="append", metavar="PATH", help="attach an image (repeatable)")
    ask.add_argument("--model", help="hub id or local folder of the chat model (overrides the config)")
    ask.add_argument("--adapter", metavar="PATH", help="folder of a LoRA adapter to apply (overrides the config)")
    ask.add_argument("--thread", metavar="ID", help="continue this conversation")
    ask.add_argument("--json", action="store_true", help="print the reply, tool calls and artifacts as JSON")
    ask.set_defaults(func=cmd_ask)

    index = sub.add_parser("index", parents=[common], help="add the images in a folder to the search index")
    index.add_argument("folder", metavar="DIR", nargs="?", help="folder of images (recursively)")
    index.add_argument("--captions", action="store_true", help="also caption each image (slower)")
    index.add_argument("--reindex", action="store_true",
                       help="rebuild the index with the configured CLIP (after changing or fine-tuning it); resumable")
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", parents=[common], help="search the indexed images by text or by an image path")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    search.set_defaults(func=cmd_search)

    video = sub.add_parser("video", parents=[common], help="make a short MP4 clip from a prompt (generate_video)")
    video.add_argument("prompt")
    video.add_argument("--negative", metavar="TEXT", help="what the clip should not show")
    video.add_argument("--frames", type=int, help="frames, 1 + a multiple of 4 (default 49)")
    video.add_argument("--fps", type=int, help="frames per second (default 8)")
    video.add_argument("--width", type=int, help="pixels, a multiple of 16 (default 720)")
    video.add_argument("--height", type=int, help="pixels, a multiple of 16 (default 480)")
    video.add_argument("--steps", type=int, help="denoising steps (default tools.video_steps)")
    video.add_argument("--guidance", type=float, help="guidance scale (default 6)")
    video.add_argument("--seed", type=int)
    video.add_argument("--allow-cpu", action="store_true", help="run on the CPU even though it takes hours")
    video.add_argument("--json", action="store_true", help="print the message and the artifact as JSON")
    video.set_defaults(func=cmd_video)

    shape = sub.add_parser("3d", parents=[common], help="make a 3-D mesh from a prompt or a photo (generate_3d)")
    shape.add_argument("prompt", nargs="?", help="the object, in a few words (or give --image)")
    shape.add_argument("--image", metavar="PATH", help="a photo of the object, under tools.allowed_dirs")
    shape.add_argument("--format", choices=["glb", "ply", "obj"], help="mesh file format (default glb)")
    shape.add_argument("--steps", type=int, help="denoising steps (default tools.shape_steps)")
    shape.add_argument("--guidance", type=float, help="guidance scale (default 15 from text, 3 from a photo)")
    shape.add_argument("--seed", type=int)
    shape.add_argument("--grid", type=int, help="samples per side of the meshing grid (default tools.mesh_grid_size)")
    shape.add_argument("--json", action="store_true", help="print the message and the artifact as JSON")
    shape.set_defaults(func=cmd_3d)

    tools = sub.add_parser("tools", parents=[common], help="list the tools the agent can call")
    tools.set_defaults(func=cmd_tools)

    threads = sub.add_parser("threads", parents=[common], help="list, show, rename or delete conversations")
    threads_sub = threads.add_subparsers(dest="action", metavar="ACTION")
    threads_sub.add_parser("list", parents=[common], help="list conversations, most recent first")
    show = threads_sub.add_parser("show", parents=[common], help="print a conversation")
    show.add_argument("thread_id", metavar="ID")
    rename = threads_sub.add_parser("rename", parents=[common], help="give a conversation a title")
    rename.add_argument("thread_id", metavar="ID")
    rename.add_argument("title", nargs="+")
    delete = threads_sub.add_parser("delete", parents=[common], help="delete a conversation")
    delete.add_argument("thread_id", metavar="ID")
    threads.set_defaults(func=cmd_threads)

    memories = sub.add_parser("memories", parents=[common], help="list, add, recall or forget long-term memories")
    memories_sub = memories.add_subparsers(dest="action", metavar="ACTION")
    memories_sub.add_parser("list", parents=[common], help="list remembered facts")
    add = memories_sub.add_parser("add", parents=[common], help="remember a fact")
    add.add_argument("fact", nargs="+")
    forget = memories_sub.add_parser("forget", parents=[common], help="forget a fact by id")
    forget.add_argument("memory_id", metavar="ID")
    recall = memories_sub.add_parser("recall", parents=[common], help="the facts closest to a query")
    recall.add_argument("query", nargs="+")
    recall.add_argument("-k", type=int, default=3)
    memories.set_defaults(func=cmd_memories)

    serve = sub.add_parser(
        "serve", parents=[common], help="an OpenAI-compatible HTTP server for the chat model and the agent",
        description="Serve POST /v1/chat/completions (the chat model, and the agent as the model 'llava-agent'), "
        "GET /v1/models and GET /health. Listens on loopback unless --host says otherwise; any other host "
        "requires API keys (--api-key, serve.api_keys, LLAVA_AGENT_SERVE__API_KEYS or serve.api_keys_file).",
    )  # fmt: skip
    _serve_options(serve)
    serve.add_argument("--no-ui", action="store_true", help="leave the chat page at / out (the API only)")
    serve.set_defaults(func=cmd_serve)

    web = sub.add_parser(
        "web", parents=[common], help="the chat page in the browser (starts the server and opens the page)",
        description="Start `llava-agent serve` with its chat page and open the page in the default browser. "
        "Takes the options of serve.",
    )  # fmt: skip
    _serve_options(web)
    web.add_argument("--no-browser", action="store_true", help="print the page's address instead of opening it")
    web.set_defaults(func=cmd_web)

    doctor = sub.add_parser("doctor", parents=[common], help="check torch, CUDA, bitsandbytes, espeak-ng, Chroma and model caches")
    doctor.set_defaults(func=cmd_doctor)

    config = sub.add_parser("config", parents=[common], help="show the resolved configuration")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION")
    config_sub.add_parser("show", parents=[common], help="print the configuration as TOML").set_defaults(func=cmd_config_show)
    config_sub.add_parser("path", parents=[common], help="print the default config file path").set_defaults(func=cmd_config_path)
    config.set_defaults(func=cmd_config_show)

    register_eval(sub, common)
    register(sub, captioner_factory=_finetune_captioner, extra_commands=[register_finetune_tools])
    return parser


def _finetune_captioner(args: argparse.Namespace) -> Any:
    """The captioning model for ``finetune clip|caption --caption-missing`` (fine-tuning does not use the tools)."""
    from agent.core.config import load_config
    from tools.caption import CaptionImageTool

    tool = CaptionImageTool.from_config(load_config(getattr(args, "config", None)))
    return lambda images: tool.caption_images(list(images))


def _configure_logging(verbose: bool) -> None:
    """Log to stderr; quiet the chatty libraries. A host that configured logging already is left alone."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # libraries that configure their own loggers at import read these: no retry chatter over the prompt
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for noisy in ("httpx", "chromadb", "urllib3", "huggingface_hub", "sentence_transformers", "transformers",
                       "bitsandbytes"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llava-agent``; returns the exit code."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help or a usage error, printed by argparse
            sys.stdout.flush()  # a reader that left shows here, not as a traceback at exit
            raise
        if not getattr(args, "func", None):
            parser.print_help()
            sys.stdout.flush()
            return 0
        from agent.core.terminal_safe import terminal_safe_streams

        # Everything a command prints (model output, file names, titles, facts, errors, log lines) is
        # shown, never obeyed by the terminal. The chat escapes its own output; its prompt needs raw stdout.
        with terminal_safe_streams(stdout=args.func is not cmd_chat):
            code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _output_closed()


def _stdout_reader_gone() -> bool:
    """Whether nothing reads stdout any more (the other end of its pipe is closed, as after ``| head -1``)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() or no descriptor: assume so, as Python's docs do
        return True


def _output_closed() -> int:
    """Stop quietly once the reader of stdout has gone: later writes, and the flush at exit, go to /dev/null.

    https://docs.python.org/3/library/signal.html#note-on-sigpipe
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout has no descriptor (replaced by a host): nothing to flush
        pass
    return OUTPUT_CLOSED_EXIT


def _run(args: argparse.Namespace) -> int:
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except LlavaAgentError as exc:
        if args.verbose:
            logger.exception("command failed")
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line unless --verbose
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            raise  # the reader of the output left: not a failure (see main)
        if args.verbose:
            logger.exception("unexpected failure")
        print(
            f"error: unexpected {type(exc).__name__}: {one_line(str(exc))} (run with --verbose for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
