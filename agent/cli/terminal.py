"""The terminal chat (``llava-agent chat``), built on prompt_toolkit.

The prompt appears at once; the agent and its model load in a background thread while the
user types. Tokens print as they are generated; tool calls and their results are shown as they
happen; generated images are previewed inline in terminals that support it (kitty, iTerm2,
WezTerm) and otherwise named by path. Ctrl-C during a reply stops that reply (the model's
generation is cancelled) and returns to the prompt; Ctrl-D or ``/quit`` leaves.
"""

from __future__ import annotations

import json
import queue
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.app.events import ReplyEvent, TokenEvent, ToolCallEvent, ToolResultEvent
from agent.cli.commands import one_line
from agent.cli.terminal_media import find_audio_player, inline_image_escape, inline_image_protocol
from agent.core.errors import ImageError, InputError, LlavaAgentError, VideoError
from agent.core.images import ImageLocation, is_image_path, load_image
from agent.core.terminal_safe import TerminalSafeWriter, terminal_safe
from agent.core.videos import VIDEO_FORMATS_HINT, is_video_path

if TYPE_CHECKING:
    from agent.app.multimodal_agent import AgentReply, MultimodalAgent
    from agent.core.config import AppConfig

HELP = """\
Commands:
  /image PATH      attach an image to your next message (or paste an image path)
  /video PATH      attach a video to your next message (the agent describes it with describe_video)
  /new             start a new conversation
  /threads         list conversations
  /resume ID       continue a conversation
  /tools           list the tools the agent can call
  /memories        list remembered facts; /forget ID forgets one
  /speak on|off    read replies aloud
  /help            this help
  /quit            leave (Ctrl-D works too)
Ctrl-C stops the reply being generated."""
COMMANDS = {
    "/image": "_command_image", "/video": "_command_video", "/new": "_command_new", "/threads": "_command_threads",
    "/resume": "_command_resume", "/tools": "_command_tools", "/memories": "_command_memories",
    "/forget": "_command_forget", "/speak": "_command_speak", "/help": "_command_help", "/quit": "_command_quit",
    "/exit": "_command_quit", "/q": "_command_quit",
}  # fmt: skip
"""Each /command and the :class:`TerminalChat` method that runs it (with the rest of the line)."""
_DONE = object()


def split_image_paths(text: str) -> tuple[list[Path], list[str]]:
    """Split a line into the existing image files it names (pasted paths) and its other words."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    paths, others = [], []
    for word in words:
        candidate = Path(word.strip("'\"")).expanduser()
        if is_image_path(candidate) and candidate.is_file():
            paths.append(candidate)
        else:
            others.append(word)
    return paths, others


def is_command(line: str, commands: Sequence[str]) -> bool:
    """Whether a typed line is a ``/command`` rather than a message that starts with a path.

    A known command name is a command; a first word that looks like a path (another ``/``, a
    ``.`` or a ``\\``: ``/home/me/My\\ Photos/cat.png what is this?``, ``/tmp/nothere.png``) or
    names an existing file is a message; any other ``/word`` is an unknown command.
    """
    if not line.startswith("/"):
        return False
    name = line.split(maxsplit=1)[0]
    if name in commands:
        return True
    if "/" in name[1:] or "." in name or "\\" in name:
        return False
    try:
        return not Path(name).exists()
    except (OSError, ValueError):
        return True


def check_image(path: Path, shown: str) -> None:
    """Refuse, before it is attached, a file the chat model could not take as an image (:mod:`agent.core.images`)."""
    try:
        load_image(path)
    except ImageError as exc:
        reason = str(exc).removeprefix(f"{ImageLocation().describe()}: ")
        raise ImageError(f"{shown!r} is not attached: {reason}") from None


class TerminalChat:
    """The interactive chat loop. ``run()`` returns the exit code."""

    def __init__(
        self,
        config: AppConfig,
        *,
        thread_id: str | None = None,
        verbose: bool = False,
        output: TextIO | None = None,
        agent_factory: Callable[[AppConfig], MultimodalAgent] | None = None,
    ) -> None:
        """``agent_factory`` builds the agent in the background (default ``MultimodalAgent.from_config``)."""
        self.config = config
        self.verbose = verbose
        self.out = output or sys.stdout
        self.thread_id: str | None = None
        self.resume_id = thread_id
        self.pending_images: list[Path] = []
        self.pending_videos: list[Path] = []
        self.draft = ""  # a message kept after its attachments failed: the next prompt starts with it
        self.speak_replies = False
        self._agent_factory = agent_factory
        self._agent: MultimodalAgent | None = None
        self._load_error: BaseException | None = None
        self._loader = threading.Thread(target=self._load_agent, name="agent-loader", daemon=True)
        self._lease: Any = None  # this process's hold on the open conversation (one writer per thread)
        self.model_error: BaseException | None = None
        self.read_only = False

    # ----- output ------------------------------------------------------------------------------

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(terminal_safe(text) + end)
        self.out.flush()

    def error(self, exc: BaseException) -> None:
        if self.verbose:
            import traceback

            traceback.print_exception(exc, file=TerminalSafeWriter(self.out))
        self.say(f"error: {one_line(str(exc)) or type(exc).__name__}")

    # ----- the agent, loaded in the background -------------------------------------------------

    def _load_agent(self) -> None:
        try:
            if self._agent_factory is not None:
                agent = self._agent_factory(self.config)
            else:
                # imported here, in the loading thread: it brings LangChain and the model stack, and
                # the prompt must appear at once
                from agent.app.multimodal_agent import MultimodalAgent

                agent = MultimodalAgent.from_config(self.config)
        except BaseException as exc:  # reported when the agent is first needed
            self._load_error = exc
            return
        # The conversations, memories and commands work from here on, even if the model cannot load
        # (no network, not downloaded): that error is shown when a message needs the model.
        self._agent = agent
        try:
            agent.prepare()  # the weights (with progress), the head copy, routing's embedder: not at the first message
        except BaseException as exc:  # the turn that needs the model reports it, in one line
            self.model_error = exc

    @property
    def agent(self) -> MultimodalAgent:
        if self._agent is None and self._load_error is None and self._loader.is_alive():
            self.say("(loading the model…)")
            while self._loader.is_alive():
                self._loader.join(0.1)
        if self._load_error is not None:
            error, self._load_error = self._load_error, None
            self._loader = threading.Thread(target=self._load_agent, name="agent-loader", daemon=True)
            self._loader.start()  # try again next time (e.g. after the user fixed a folder)
            raise error
        assert self._agent is not None
        return self._agent

    # ----- the loop ----------------------------------------------------------------------------

    def prompt_text(self) -> str:
        parts = []
        for count, noun in ((len(self.pending_images), "image"), (len(self.pending_videos), "video")):
            if count:
                parts.append(f"{count} {noun}{'s' if count > 1 else ''}")
        return f"you [{', '.join(parts)}]> " if parts else "you> "

    def run(self) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        self._loader.start()
        history_path = self.config.data_dir.expanduser() / "chat_history"
        try:
            from agent.core.private_files import ensure_private_file

            ensure_private_file(history_path)  # typed lines are private: 0600 in the 0700 data folder
            history: Any = FileHistory(str(history_path))
        except OSError:
            history = InMemoryHistory()
        session: PromptSession[str] = PromptSession(history=history)
        self.say("llava-agent chat: type a message, /help for commands, Ctrl-D to leave.")
        if self.resume_id:
            self._run_command(f"/resume {self.resume_id}")
        while True:
            try:
                with patch_stdout(raw=True):
                    line = session.prompt(self.prompt_text(), default=self.draft)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.draft = ""
            if not self.handle_line(line):
                break
        self._open_thread(None)
        self.say("bye")
        return 0

    def handle_line(self, line: str) -> bool:
        """Act on one typed line: a /command, pasted image paths, or a message. False means quit."""
        line = line.strip()
        if not line:
            return True
        try:
            if is_command(line, tuple(COMMANDS)):
                return self._run_command(line)
            pasted, words = split_image_paths(line)
            if pasted and not words:  # only pasted paths: attach them and wait for the message
                self._attach(pasted)
                return True
            try:
                self._attach(pasted, quiet=True)
            except ImageError:
                self._keep_message(line)
                raise
            self.turn(line)
        except LlavaAgentError as exc:
            self.error(exc)
        except KeyboardInterrupt:
            self.say("\n[stopped]")
        except Exception as exc:  # an unexpected failure ends the command, not the chat
            self.error(RuntimeError(f"{type(exc).__name__}: {exc}"))
        return True

    def _keep_message(self, text: str) -> None:
        """Offer ``text`` again at the next prompt, after what it carried was refused."""
        self.draft = text
        self.say("(your message is kept: press Enter to send it, or edit it first)")

    def _open_thread(self, thread_id: str | None) -> None:
        """Make ``thread_id`` the open conversation, holding it against writers in other processes."""
        from memory.thread_lease import ThreadBusyError, hold_thread, lease_folder

        if self._lease is not None and thread_id == self._lease.thread_id:
            return
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.read_only = False
        if thread_id is None:
            return
        try:
            self._lease = hold_thread(lease_folder(self.agent.conversations.db_path), thread_id)
        except ThreadBusyError as exc:
            self.read_only = True
            self.say(f"(read-only) {exc}")

    def _attach(self, paths: list[Path], quiet: bool = False) -> None:
        """Attach the images at ``paths`` to the next message, each checked first; a bad one is refused."""
        for path in paths:
            check_image(path, str(path))
        for path in paths:
            if path not in self.pending_images:
                self.pending_images.append(path)
            if not quiet:
                self.say(f"attached {path}; type your message")

    # ----- commands ----------------------------------------------------------------------------

    def _run_command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, rest = line.partition(" ")
        method = COMMANDS.get(name)
        if method is None:
            raise InputError(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} (/help says what "
                             "each does; to send a message that starts with a path, type the path in full)")
        return getattr(self, method)(rest.strip()) is not False

    def _command_quit(self, rest: str) -> bool:
        return False

    def _command_help(self, rest: str) -> None:
        self.say(HELP)

    def _command_image(self, rest: str) -> None:
        self._attach([self._named_file(rest, "image", ImageError)])

    def _command_video(self, rest: str) -> None:
        path = self._named_file(rest, "video", VideoError)
        if not is_video_path(path):
            raise VideoError(f"{rest!r} is not a video file by its name; give a {VIDEO_FORMATS_HINT} file")
        if path not in self.pending_videos:
            self.pending_videos.append(path)
        self.say(f"attached {path}; type your message")

    @staticmethod
    def _named_file(rest: str, kind: str, error: type[InputError]) -> Path:
        """The file that ``/image PATH`` or ``/video PATH`` names; refused when there is none."""
        if not rest:
            raise InputError(f"/{kind} needs a path: /{kind} PATH")
        path = Path(rest.strip("'\"")).expanduser()
        if not path.is_file():
            raise error(f"{kind} {rest!r} does not exist or is not a file; check the path")
        return path

    def _command_new(self, rest: str) -> None:
        self._open_thread(None)
        self.thread_id = None
        self.pending_images.clear()
        self.pending_videos.clear()
        self.say("new conversation")

    def _command_threads(self, rest: str) -> None:
        self._list_threads()

    def _command_resume(self, rest: str) -> None:
        if not rest:
            raise InputError("/resume needs a thread id: /resume ID (see /threads)")
        self._resume(rest)

    def _command_tools(self, rest: str) -> None:
        for tool in self.agent.tools:
            description = " ".join((tool.description or "").split())
            self.say(f"  {tool.name}: {description[:100]}")

    def _command_memories(self, rest: str) -> None:
        facts = self._memory().list()
        self.say("\n".join(f"  {m.memory_id}  {m.text}" for m in facts) or "no memories yet")

    def _command_forget(self, rest: str) -> None:
        memory = self._memory()
        if not rest:
            raise InputError("/forget needs a memory id: /forget ID (see /memories)")
        self.say(f"forgot {memory.forget(rest).text}")

    def _memory(self) -> Any:
        memory = self.agent.memory
        if memory is None:
            raise InputError("long-term memory is off; set agent.long_term_memory = true in the config")
        return memory

    def _command_speak(self, rest: str) -> None:
        if rest not in ("on", "off"):
            raise InputError(f"/speak takes on or off, got {rest!r}")
        self.speak_replies = rest == "on"
        if self.speak_replies and not any(t.name == "speak" for t in self.agent.tools):
            self.speak_replies = False
            raise InputError("the speak tool is not enabled; add \"speak\" to tools.enabled in the config")
        player = find_audio_player()
        note = "" if player or not self.speak_replies else " (no audio player found; audio files are saved only)"
        self.say(f"speak {rest}{note}")

    def _list_threads(self) -> None:
        import datetime

        threads = self.agent.conversations.list_threads()
        if not threads:
            self.say("no conversations yet")
        for info in threads:
            mark = "*" if info.thread_id == self.thread_id else " "
            when = datetime.datetime.fromtimestamp(info.updated_at).strftime("%Y-%m-%d %H:%M")
            self.say(f"{mark} {info.thread_id}  {when}  {info.title or '(untitled)'}")

    def _resume(self, thread_id: str) -> None:
        info = self.agent.conversations.get(thread_id)
        self._open_thread(info.thread_id)
        self.thread_id = info.thread_id
        messages = self.agent.conversations.messages(info.thread_id)
        self.say(f"resumed {info.thread_id}: {info.title} ({len(messages)} messages)")
        shown = [m for m in messages if m.type in ("human", "ai") and m.text.strip()][-4:]
        for message in shown:
            who = "you" if message.type == "human" else "llava"
            text = " ".join(message.text.split())
            self.say(f"  {who}: {text[:200]}")

    # ----- one turn ----------------------------------------------------------------------------

    def turn(self, text: str) -> AgentReply | None:
        """Send a message and print the reply as it streams; Ctrl-C stops the reply."""

        agent = self.agent
        if self._loader.is_alive():
            self.say("(loading the model…)")
        images, self.pending_images = list(self.pending_images), []
        videos, self.pending_videos = list(self.pending_videos), []
        events: queue.Queue[Any] = queue.Queue()
        # only a turn with videos passes them: an agent (or a stand-in) without video support still works
        extra: dict[str, Any] = {"videos": videos} if videos else {}

        def produce() -> None:
            try:
                for event in agent.stream(text, images=images, thread_id=self.thread_id, **extra):
                    events.put(event)
            except BaseException as exc:  # shown by the printing loop
                events.put(exc)
            finally:
                events.put(_DONE)

        worker = threading.Thread(target=produce, name="agent-turn", daemon=True)
        worker.start()
        reply: AgentReply | None = None
        refused: ImageError | VideoError | None = None
        streamed = shown_tools = False
        at_line_start = True
        stopping = False
        while True:
            try:
                try:
                    item = events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    if not at_line_start:
                        self.say()
                    if isinstance(item, (ImageError, VideoError)) and not streamed and not shown_tools:
                        refused = item  # an attachment the agent would not take: nothing was sent
                    if isinstance(item, LlavaAgentError):
                        self.error(item)
                    else:
                        self.error(RuntimeError(f"{type(item).__name__}: {item}"))
                    at_line_start = True
                elif isinstance(item, TokenEvent):
                    if at_line_start:
                        self.say("llava> ", end="")
                    self.say(item.text, end="")
                    streamed, at_line_start = True, False
                elif isinstance(item, ToolCallEvent):
                    shown_tools = True
                    if not at_line_start:
                        self.say()
                    self.say(f"[tool] {item.name} {json.dumps(item.args, ensure_ascii=False)}")
                    at_line_start = True
                elif isinstance(item, ToolResultEvent):
                    self._show_tool_result(item)
                    at_line_start = True
                elif isinstance(item, ReplyEvent):
                    reply = item.reply
            except KeyboardInterrupt:
                if not stopping:  # the reply ends at the next token, or when a running tool returns
                    stopping = True
                    agent.stop()
                    self.say("" if at_line_start else "\n", end="")
                    self.say("[stopping]")
                    at_line_start = True
        worker.join()
        if reply is None:
            if refused is not None:
                self._keep_turn(text, images, videos, str(refused))
            return None
        if reply.thread_id:
            self.thread_id = reply.thread_id
            self._open_thread(reply.thread_id)
        if reply.text and (not streamed or reply.limit_reached):
            self.say(("" if at_line_start else "\n") + f"llava> {reply.text}", end="")
            at_line_start = False
        if not at_line_start:
            self.say()
        if reply.stopped:
            self.say("[stopped]")
        if self.speak_replies and reply.text and not reply.stopped:
            self._speak(reply.text)
        return reply

    def _keep_turn(self, text: str, images: list[Path], videos: list[Path], error: str) -> None:
        """After an attachment was refused at sending: keep the message and every attachment the error does not name."""
        named = [path for path in [*images, *videos] if str(path) in error or repr(str(path)) in error]
        for path in images:
            if path not in named and path not in self.pending_images:
                self.pending_images.append(path)
        for path in videos:
            if path not in named and path not in self.pending_videos:
                self.pending_videos.append(path)
        if text.strip():
            self._keep_message(text)

    def _show_tool_result(self, event: Any) -> None:
        if event.is_error:
            self.say(f"[tool error] {event.name}: {one_line(event.content)[:300]}")
            return
        self.say(f"[tool done] {event.name}: {one_line(event.content)[:300]}")
        artifact = event.artifact if isinstance(event.artifact, dict) else {}
        path = artifact.get("path")
        preview = artifact.get("preview")  # a video's contact sheet, a 3-D model's views
        if isinstance(path, str) and is_image_path(path) and Path(path).is_file():
            self._show_image(Path(path))
        elif isinstance(preview, str) and is_image_path(preview) and Path(preview).is_file():
            self._show_image(Path(preview))
        elif isinstance(path, str) and path.endswith(".wav") and event.name == "speak":
            self._play(Path(path))

    def _show_image(self, path: Path) -> None:
        protocol = inline_image_protocol()
        if protocol is None or not self.out.isatty():
            self.say(f"  image: {path}")
            return
        try:
            self.out.write(inline_image_escape(path, protocol))
            self.out.flush()
        except OSError:
            self.say(f"  image: {path}")

    def _speak(self, text: str) -> None:
        tool = next((t for t in self.agent.tools if t.name == "speak"), None)
        if tool is None:
            return
        from langchain_core.messages import ToolMessage

        try:
            result = tool.invoke({"type": "tool_call", "name": "speak", "id": "speak-reply", "args": {"text": text}})
        except LlavaAgentError as exc:
            self.error(exc)
            return
        artifact = result.artifact if isinstance(result, ToolMessage) else None
        if isinstance(artifact, dict) and isinstance(artifact.get("path"), str):
            self._play(Path(artifact["path"]))

    def _play(self, path: Path) -> None:
        player = find_audio_player()
        if player is None:
            self.say(f"  audio: {path}")
            return
        subprocess.Popen([*player, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
