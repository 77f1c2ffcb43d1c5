"""The ``llava-agent`` command line: chat, one-shot questions, the image index, threads, memories, checks.

This module only parses arguments and prints; the work happens in the library. Library errors
become one line on stderr and exit code 1 (``--verbose`` adds the traceback). Nothing heavy is
imported at module level, so ``llava-agent --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import LlavaAgentError

logger = logging.getLogger(__name__)


def _load_config(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    overrides: dict[str, Any] = {}
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
    from agent.terminal import TerminalChat

    config = _load_config(args)
    return TerminalChat(config, thread_id=args.thread, verbose=args.verbose).run()


def cmd_ask(args: argparse.Namespace) -> int:
    from agent.multimodal_agent import MultimodalAgent, ReplyEvent, TokenEvent, ToolCallEvent, ToolResultEvent

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
        print(json.dumps({
            "text": reply.text,
            "thread_id": reply.thread_id,
            "tool_calls": reply.tool_calls,
            "artifacts": reply.artifacts,
            "stopped": reply.stopped,
            "limit_reached": reply.limit_reached,
        }, ensure_ascii=False, default=str))
    else:
        if reply.limit_reached:
            print(reply.text)
        print(f"\n(thread {reply.thread_id})")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from memory.image_index import ImageIndex

    config = _load_config(args)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        from agent.errors import InputError

        raise InputError(f"folder {args.folder!r} does not exist or is not a folder; give a folder of images")
    captioner = None
    if args.captions:
        from tools import build_tools

        captioner = next((t for t in build_tools(config) if t.name == "caption_image"), None)
    report = ImageIndex.from_config(config).index_folder(folder, captioner=captioner)
    print(report.summary())
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import run_checks

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
    from agent.config import CONFIG_ENV, config_to_toml, default_config_path

    config = _load_config(args)
    import os

    source = args.config or os.environ.get(CONFIG_ENV) or default_config_path()
    print(f"# configuration from {source} (plus LLAVA_AGENT_* environment variables)")
    print(config_to_toml(config), end="")
    return 0


def cmd_config_path(args: argparse.Namespace) -> int:
    from agent.config import default_config_path

    print(default_config_path())
    return 0


# ----- parser -----------------------------------------------------------------------------------


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
    index.add_argument("folder", metavar="DIR")
    index.add_argument("--captions", action="store_true", help="also caption each image (slower)")
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", parents=[common], help="search the indexed images by text or by an image path")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    search.set_defaults(func=cmd_search)

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

    doctor = sub.add_parser("doctor", parents=[common], help="check torch, CUDA, bitsandbytes, espeak-ng, Chroma and model caches")
    doctor.set_defaults(func=cmd_doctor)

    config = sub.add_parser("config", parents=[common], help="show the resolved configuration")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION")
    config_sub.add_parser("show", parents=[common], help="print the configuration as TOML").set_defaults(func=cmd_config_show)
    config_sub.add_parser("path", parents=[common], help="print the default config file path").set_defaults(func=cmd_config_path)
    config.set_defaults(func=cmd_config_show)

    from agent.routing_cli import register as register_eval

    register_eval(sub, common)

    try:
        from finetune.cli import register
    except ImportError as exc:  # fine-tuning is optional; the rest of the CLI works without it
        logger.debug("finetune commands unavailable: %s", exc)
    else:
        register(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Log to stderr; quiet the chatty libraries. A host that configured logging already is left alone."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
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
