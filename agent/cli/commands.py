"""What each ``llava-agent`` command does, once :mod:`agent.cli.main` has parsed its arguments.

Each ``cmd_*`` function takes the parsed arguments, calls the library and prints; it returns the
exit code. Library errors propagate to :func:`agent.cli.main.main`, which turns them into one
line on stderr. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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

    source = args.config or os.environ.get(CONFIG_ENV) or default_config_path()
    print(f"# configuration from {source} (plus LLAVA_AGENT_* environment variables)")
    print(config_to_toml(config), end="")
    return 0


def cmd_config_path(args: argparse.Namespace) -> int:
    from agent.core.config import default_config_path

    print(default_config_path())
    return 0


# ----- parser -----------------------------------------------------------------------------------
