"""The ``llava-agent`` command line: chat, one-shot questions, the image index, threads, memories, checks.

This module only parses arguments and prints; the work happens in the library. Library errors
become one line on stderr and exit code 1 (``--verbose`` adds the traceback). Nothing heavy is
imported at module level, so ``llava-agent --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.core.errors import LlavaAgentError

logger = logging.getLogger(__name__)


def _load_config(args: argparse.Namespace, tools: dict[str, Any] | None = None) -> Any:
    from agent.core.config import load_config

    overrides: dict[str, Any] = {"tools": tools} if tools else {}
    if getattr(args, "model", None):
        overrides.setdefault("model", {})["model"] = args.model
    if getattr(args, "adapter", None):
        overrides.setdefault("model", {})["adapter"] = args.adapter
    return load_config(args.config, overrides=overrides or None)


def one_line(message: str) -> str:
    """A possibly multi-line message as one line (``a:\n  b\n  c`` -> ``a: b; c``)."""
    line = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            line = part if not line else line + (" " if line.endswith(":") else "; ") + part
    return line


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


# ----- commands ---------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from agent.cli.terminal import TerminalChat

    config = _load_config(args)
    return TerminalChat(config, thread_id=args.thread, verbose=args.verbose).run()


def cmd_ask(args: argparse.Namespace) -> int:
    from agent.app.multimodal_agent import (
        MultimodalAgent,
        ReplyEvent,
        TokenEvent,
        ToolCallEvent,
        ToolResultEvent,
    )

    config = _load_config(args)
    agent = MultimodalAgent.from_config(config)
    thread_id = agent.conversations.get(args.thread).thread_id if args.thread else None
    reply = None
    for event in agent.stream(args.message, images=args.image or (), thread_id=thread_id):
        if isinstance(event, TokenEvent) and not args.json:
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallEvent) and not args.json:
            print(f"\n[tool] {event.name} {json.dumps(event.args, ensure_ascii=False)}", flush=True)
        elif isinstance(event, ToolResultEvent) and not args.json:
            status = "error" if event.is_error else "done"
            print(f"[tool {status}] {event.name}: {one_line(event.content)[:300]}", flush=True)
        elif isinstance(event, ReplyEvent):
            reply = event.reply
    assert reply is not None
    if args.json:
        from agent.core.terminal_safe import json_text

        print(json_text({
            "text": reply.text,
            "thread_id": reply.thread_id,
            "tool_calls": reply.tool_calls,
            "artifacts": reply.artifacts,
            "stopped": reply.stopped,
            "limit_reached": reply.limit_reached,
        }, default=str))
    else:
        if reply.limit_reached:
            print(reply.text)
        print(f"\n(thread {reply.thread_id})")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from agent.core.errors import InputError
    from memory.image_index import ImageIndex

    config = _load_config(args)
    if args.folder is None and not args.reindex:
        raise InputError("give a folder of images to index, or --reindex to rebuild the index with the current CLIP")
    folder = Path(args.folder).expanduser() if args.folder is not None else None
    if folder is not None and not folder.is_dir():
        raise InputError(f"folder {args.folder!r} does not exist or is not a folder; give a folder of images")
    index = ImageIndex.from_config(config)
    if args.reindex:
        print(index.reindex().summary())
    if folder is None:
        return 0
    captioner = None
    if args.captions:
        from tools.caption import CaptionImageTool

        captioner = CaptionImageTool.from_config(config)
    print(index.index_folder(folder, captioner=captioner).summary())
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from memory.image_index import ImageIndex

    config = _load_config(args)
    hits = ImageIndex.from_config(config).search(args.query, args.k)
    if not hits:
        print("no images found; index a folder first with `llava-agent index DIR`")
    for hit in hits:
        caption = f"  {hit.caption}" if hit.caption else ""
        print(f"{hit.score:.3f}  {hit.path}{caption}")
    return 0


def _all_tools(config: Any) -> list[Any]:
    from tools import build_tools

    tools = list(build_tools(config))
    if config.agent.long_term_memory:
        from memory.long_term import LongTermMemory

        tools += LongTermMemory(config).tools()
    return tools


def cmd_tools(args: argparse.Namespace) -> int:
    config = _load_config(args)
    for tool in _all_tools(config):
        description = " ".join((tool.description or "").split())
        print(f"{tool.name}: {description}")
    return 0


def _run_tool(config: Any, name: str, arguments: dict[str, Any]) -> Any:
    """Run one registered tool (enabled or not) and return its message; its errors are raised as library errors."""
    from langchain_core.tools import ToolException

    from tools.registry import build_tool

    tool = build_tool(name, config)
    tool.handle_tool_error = False
    given = {key: value for key, value in arguments.items() if value is not None}
    try:
        return tool.invoke({"type": "tool_call", "id": f"cli-{name}", "name": name, "args": given})
    except ToolException as exc:
        if isinstance(exc.__cause__, LlavaAgentError):
            raise exc.__cause__ from None
        raise


def _print_tool_result(message: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"text": message.content, "artifact": message.artifact}, ensure_ascii=False, default=str))
    else:
        print(message.content)


def cmd_video(args: argparse.Namespace) -> int:
    config = _load_config(args, tools={"video_allow_cpu": True} if args.allow_cpu else None)
    message = _run_tool(config, "generate_video", {
        "prompt": args.prompt, "negative_prompt": args.negative, "frames": args.frames, "fps": args.fps,
        "width": args.width, "height": args.height, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
    })
    _print_tool_result(message, args.json)
    return 0


def cmd_3d(args: argparse.Namespace) -> int:
    config = _load_config(args, tools={"mesh_grid_size": args.grid} if args.grid else None)
    message = _run_tool(config, "generate_3d", {
        "prompt": args.prompt, "image": args.image, "format": args.format, "steps": args.steps,
        "guidance": args.guidance, "seed": args.seed,
    })
    _print_tool_result(message, args.json)
    return 0


def cmd_threads(args: argparse.Namespace) -> int:
    from memory.conversations import ConversationStore

    config = _load_config(args)
    with ConversationStore(config.conversations_db) as store:
        action = args.action or "list"
        if action == "list":
            threads = store.list_threads()
            if not threads:
                print("no conversations yet; start one with `llava-agent chat`")
            for info in threads:
                print(f"{info.thread_id}  {_when(info.updated_at)}  {info.title or '(untitled)'}")
        elif action == "show":
            info = store.get(args.thread_id)
            print(f"{info.thread_id}  {info.title}")
            for message in store.messages(info.thread_id):
                text = one_line(message.text)
                print(f"{message.type:>6}: {text}" if text else f"{message.type:>6}: (tool call)")
        elif action == "rename":
            info = store.rename(args.thread_id, " ".join(args.title))
            print(f"renamed {info.thread_id}: {info.title}")
        elif action == "delete":
            from memory.thread_lease import hold_thread, lease_folder

            with hold_thread(lease_folder(store.db_path), store.get(args.thread_id).thread_id):  # not while open elsewhere
                info = store.delete(args.thread_id)
            print(f"deleted {info.thread_id}: {info.title}")
    return 0


def cmd_memories(args: argparse.Namespace) -> int:
    from memory.long_term import LongTermMemory

    config = _load_config(args)
    memory = LongTermMemory(config)
    action = args.action or "list"
    if action == "list":
        memories = memory.list()
        if not memories:
            print("no memories yet; ask the agent to remember something, or `llava-agent memories add FACT`")
        for item in memories:
            print(f"{item.memory_id}  {_when(item.created_at)}  {item.text}")
    elif action == "add":
        item = memory.remember(" ".join(args.fact))
        print(f"remembered {item.memory_id}: {item.text}")
    elif action == "forget":
        item = memory.forget(args.memory_id)
        print(f"forgot {item.memory_id}: {item.text}")
    elif action == "recall":
        for item in memory.recall(" ".join(args.query), args.k):
            print(f"{item.score:.3f}  {item.memory_id}  {item.text}")
    return 0


def cmd_serve(args: argparse.Namespace, *, page: bool = False) -> int:
    from agent.serve.server import check_dependencies, run_server

    check_dependencies()  # a clear message before any model work when the serve extra is missing
    overrides: dict[str, Any] = {}
    for option in ("host", "port", "model_name", "agent_model", "public_url", "max_batch"):
        if getattr(args, option, None) is not None:
            overrides[option] = getattr(args, option)
    if args.no_agent:
        overrides["agent_model"] = None
    if args.cors_origin:
        overrides["cors_origins"] = args.cors_origin
    if args.allow_remote_images:
        overrides["allow_remote_images"] = True
    if page:
        overrides["ui"] = True
    elif args.no_ui:
        overrides["ui"] = False
    config = _load_config(args)
    if overrides:
        from agent.core.config import load_config

        config = load_config(config, overrides={"serve": overrides})
    browser = page and not args.no_browser
    return run_server(config, api_keys=args.api_key or (), verbose=args.verbose, open_page=browser)


def cmd_web(args: argparse.Namespace) -> int:
    return cmd_serve(args, page=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.cli.doctor import run_checks

    config = _load_config(args)
    failed = 0
    for check in run_checks(config):
        mark = {"ok": "ok  ", "warn": "warn", "missing": "FAIL"}[check.status]
        print(f"[{mark}] {check.name}: {check.detail}")
        if check.status != "ok" and check.advice:
            print(f"       -> {check.advice}")
        failed += check.status == "missing" and check.required
    return 1 if failed else 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from agent.core.config import CONFIG_ENV, config_to_toml, default_config_path

    config = _load_config(args)
    import os

    source = args.config or os.environ.get(CONFIG_ENV) or default_config_path()
    print(f"# configuration from {source} (plus LLAVA_AGENT_* environment variables)")
    print(config_to_toml(config), end="")
    return 0


def cmd_config_path(args: argparse.Namespace) -> int:
    from agent.core.config import default_config_path

    print(default_config_path())
    return 0


# ----- parser -----------------------------------------------------------------------------------


def _serve_options(parser: argparse.ArgumentParser) -> None:
    """The options `serve` and `web` share."""
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
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
    # the same two options after the command name too (llava-agent chat --verbose)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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

    from agent.cli.routing import register_eval, register_finetune_tools
    from finetune.cli import register

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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from agent.core.terminal_safe import terminal_safe_streams

    # Everything a command prints (model output, file names, titles, facts, errors, log lines) is
    # shown, never obeyed by the terminal. The chat escapes its own output; its prompt needs raw stdout.
    with terminal_safe_streams(stdout=args.func is not cmd_chat):
        return _run(args)


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
        if args.verbose:
            logger.exception("unexpected failure")
        print(
            f"error: unexpected {type(exc).__name__}: {one_line(str(exc))} (run with --verbose for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
