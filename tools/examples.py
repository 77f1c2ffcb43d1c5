"""Example requests a tool declares: how users ask for it, with argument slots.

A :class:`ToolExample` is a request with ``{slot}`` placeholders and the arguments that request
means, in terms of the same slots::

    ToolExample("Draw {subject}, {style}", {"prompt": "{subject}, {style}"})
    ToolExample("What is in this picture?", {"image": "{attached}"})     # an image is attached

Slots are filled from lexicons (:mod:`agent.app.tool_data` ships paths, subjects, styles, sentences,
facts...; a tool can bring its own values with ``slots=``). ``{attached}`` marks a request sent
with an attached image; the argument becomes that image's path. An argument that is exactly one
slot takes the slot's value with its type (``"{count}"`` -> ``3``).

Two consumers read them: the tool-use training data (:func:`agent.app.tool_data.synthesize_tool_data`)
and semantic pre-routing (:mod:`agent.app.routing`). Tools declare examples when they register
(``register_tool(name, factory, examples=[...])``, the path built-in and plugin tools share), or
any LangChain tool carries them in ``tool.metadata["examples"]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.errors import ConfigError

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

ATTACHED_SLOT = "attached"
_SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class ToolExample:
    """One way of asking for a tool: a request with ``{slot}`` placeholders and the arguments it means."""

    request: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    slots: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Values for slots of this example only (others come from the shared lexicons)."""

    def __post_init__(self) -> None:
        if not isinstance(self.request, str) or not self.request.strip():
            raise ConfigError(f"a tool example needs a request text, got {self.request!r}")
        if not isinstance(self.arguments, Mapping):
            raise ConfigError(f"arguments of the example {self.request!r} must be a dict, got {self.arguments!r}")
        request_slots = set(_SLOT.findall(self.request))
        if ATTACHED_SLOT in request_slots:
            raise ConfigError(
                f"example {self.request!r}: {{attached}} belongs in the arguments only (the image is attached, "
                "not written in the request)"
            )
        for name, value in self.arguments.items():
            missing = set(_SLOT.findall(value)) - request_slots - {ATTACHED_SLOT} if isinstance(value, str) else set()
            if missing:
                raise ConfigError(
                    f"example {self.request!r}: argument {name!r} uses slot(s) {sorted(missing)} the request does not "
                    "contain; every slot of an argument must appear in the request"
                )

    @property
    def request_slots(self) -> list[str]:
        return _SLOT.findall(self.request)

    def copied_slot(self, argument: str) -> str | None:
        """The slot ``argument`` is copied from verbatim (its value is exactly ``{slot}``), else None."""
        value = self.arguments.get(argument)
        match = _SLOT.fullmatch(value) if isinstance(value, str) else None
        return match.group(1) if match else None

    @property
    def attaches_image(self) -> bool:
        return any(isinstance(v, str) and f"{{{ATTACHED_SLOT}}}" in v for v in self.arguments.values())


def as_examples(items: Iterable[ToolExample | Mapping[str, Any] | str], tool: str = "") -> tuple[ToolExample, ...]:
    """Accept examples as ``ToolExample``, ``{"request": ..., "arguments": ...}`` dicts or plain strings."""
    out = []
    for item in items or ():
        if isinstance(item, ToolExample):
            out.append(item)
        elif isinstance(item, str):
            out.append(ToolExample(item))
        elif isinstance(item, Mapping) and "request" in item:
            out.append(ToolExample(item["request"], dict(item.get("arguments") or {}),
                                   {k: tuple(v) for k, v in (item.get("slots") or {}).items()}))
        else:
            raise ConfigError(f"example {item!r} of tool {tool!r} is not a ToolExample, a dict with 'request', or a string")
    return tuple(out)


_registered: dict[str, tuple[ToolExample, ...]] = {}


def register_tool_examples(name: str, examples: Iterable[ToolExample | Mapping[str, Any] | str]) -> None:
    """Declare example requests for the tool called ``name`` (replaces earlier ones)."""
    _registered[name] = as_examples(examples, name)


def tool_examples(tool: BaseTool | str) -> tuple[ToolExample, ...]:
    """A tool's examples: ``tool.metadata["examples"]`` if it carries them, else those registered for its name."""
    if not isinstance(tool, str):
        carried = (getattr(tool, "metadata", None) or {}).get("examples")
        if carried:
            return as_examples(carried, tool.name)
        tool = tool.name
    return _registered.get(tool, ())


# -- the built-in tools' examples ---------------------------------------------------------------
CAPTION_EXAMPLES = (
    ToolExample("What does {image} show?", {"image": "{image}"}),
    ToolExample("Describe the picture {image}", {"image": "{image}"}),
    ToolExample("caption {image}", {"image": "{image}"}),
    ToolExample("Tell me what's in the photo at {image}", {"image": "{image}"}),
    ToolExample("Look at {image} and tell me what you see", {"image": "{image}"}),
    ToolExample("Give me a detailed description of {image}", {"image": "{image}", "detail": "detailed"}),
    ToolExample("What is in this image?", {"image": "{attached}"}),
    ToolExample("Describe this photo for me", {"image": "{attached}"}),
    ToolExample("Describe this picture in detail", {"image": "{attached}", "detail": "detailed"}),
    ToolExample("Can you explain what's going on in {image}?", {"image": "{image}"}),
    ToolExample("I need a short caption for {image}", {"image": "{image}"}),
    ToolExample("Who or what is in {image}?", {"image": "{image}"}),
    ToolExample("Write a one-line description of {image}", {"image": "{image}"}),
    ToolExample("Could you check {image} and say what it depicts?", {"image": "{image}"}),
    ToolExample("Summarise the contents of the image {image}", {"image": "{image}"}),
    ToolExample("What am I looking at here?", {"image": "{attached}"}),
    ToolExample("Caption the attached photo", {"image": "{attached}"}),
    ToolExample("Tell me everything you can see in this picture", {"image": "{attached}", "detail": "detailed"}),
    ToolExample("Can you see what's in this image? Describe it briefly", {"image": "{attached}"}),
    ToolExample("Give me a quick caption of {image}", {"image": "{image}", "detail": "short"}),
    ToolExample("Describe everything in {image} in detail", {"image": "{image}", "detail": "detailed"}),
    ToolExample("What do you see in the image {image}?", {"image": "{image}"}),
    ToolExample("Explain this picture", {"image": "{attached}"}),
    ToolExample("hey, look at this and describe it", {"image": "{attached}"}),
    ToolExample("Interpret the picture at {image}", {"image": "{image}"}),
    ToolExample("What's depicted in {image}?", {"image": "{image}"}),
    ToolExample("Break down what's in this photo", {"image": "{attached}"}),
    ToolExample("Label what you can see in {image}", {"image": "{image}"}),
)
GENERATE_EXAMPLES = (
    ToolExample("Draw {subject}", {"prompt": "{subject}"}),
    ToolExample("Create an image of {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Make a picture of {subject}", {"prompt": "{subject}"}),
    ToolExample("Paint {subject} {style}", {"prompt": "{subject} {style}"}),
    ToolExample("Generate a picture showing {subject}", {"prompt": "{subject}"}),
    ToolExample("I'd like an image of {subject}", {"prompt": "{subject}"}),
    ToolExample("Render {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Can you sketch {subject}?", {"prompt": "{subject}"}),
    ToolExample("Illustrate {subject} for me", {"prompt": "{subject}"}),
    ToolExample("I need artwork of {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Produce an illustration: {subject}", {"prompt": "{subject}"}),
    ToolExample("Could you design a poster showing {subject}?", {"prompt": "{subject}"}),
    ToolExample("Show me what {subject} would look like", {"prompt": "{subject}"}),
    ToolExample("Picture this: {subject}. Make it {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Dream up an image of {subject}", {"prompt": "{subject}"}),
    ToolExample("Visualise {subject} as a new image", {"prompt": "{subject}"}),
    ToolExample("Please paint a picture of {subject}", {"prompt": "{subject}"}),
    ToolExample("Can you make me an image of {subject}?", {"prompt": "{subject}"}),
    ToolExample("Could you draw {subject} {style}?", {"prompt": "{subject} {style}"}),
    ToolExample("An image of {subject}, please", {"prompt": "{subject}"}),
    ToolExample("Generate art of {subject}", {"prompt": "{subject}"}),
    ToolExample("Sketch me {subject}", {"prompt": "{subject}"}),
    ToolExample("Create a drawing of {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Produce a picture: {subject}", {"prompt": "{subject}"}),
    ToolExample("Come up with a picture of {subject}", {"prompt": "{subject}"}),
    ToolExample("Doodle {subject}", {"prompt": "{subject}"}),
    ToolExample("Make artwork showing {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("Draw up {subject} for me", {"prompt": "{subject}"}),
    ToolExample("Render an image of {subject}", {"prompt": "{subject}"}),
)
SEARCH_EXAMPLES = (
    ToolExample("Find my photos of {query}", {"query": "{query}"}),
    ToolExample("Search my pictures for {query}", {"query": "{query}"}),
    ToolExample("Show me the images I have of {query}", {"query": "{query}"}),
    ToolExample("Do I have any pictures of {query}?", {"query": "{query}"}),
    ToolExample("Show me {count} of my photos of {query}", {"query": "{query}", "k": "{count}"}),
    ToolExample("Find images that look like {image}", {"query": "{image}"}),
    ToolExample("Find photos of mine that look like this one", {"query": "{attached}"}),
    ToolExample("Where are my pictures of {query}?", {"query": "{query}"}),
    ToolExample("Look through my photo library for {query}", {"query": "{query}"}),
    ToolExample("Pull up the shots I took of {query}", {"query": "{query}"}),
    ToolExample("Which of my indexed images show {query}?", {"query": "{query}"}),
    ToolExample("I'm looking for a photo of {query} in my collection", {"query": "{query}"}),
    ToolExample("Get me {count} pictures from my folder with {query}", {"query": "{query}", "k": "{count}"}),
    ToolExample("find pics of {query}", {"query": "{query}"}),
    ToolExample("Search my photos for {query}", {"query": "{query}"}),
    ToolExample("Show me my pictures with {query} in them", {"query": "{query}"}),
    ToolExample("Have I got any photos of {query}?", {"query": "{query}"}),
    ToolExample("Find {count} images of {query} from my collection", {"query": "{query}", "k": "{count}"}),
    ToolExample("Search my image folder for something like {image}", {"query": "{image}"}),
    ToolExample("Browse my albums for {query}", {"query": "{query}"}),
    ToolExample("Bring up photos featuring {query}", {"query": "{query}"}),
    ToolExample("Scan my gallery for {query}", {"query": "{query}"}),
    ToolExample("Any shots of {query} in my pictures?", {"query": "{query}"}),
)
SPEAK_EXAMPLES = (
    ToolExample("Say '{sentence}'", {"text": "{sentence}"}),
    ToolExample("Read this aloud: {sentence}", {"text": "{sentence}"}),
    ToolExample("Please say out loud: {sentence}", {"text": "{sentence}"}),
    ToolExample("Speak this sentence: {sentence}", {"text": "{sentence}"}),
    ToolExample('Can you read "{sentence}" out loud?', {"text": "{sentence}"}),
    ToolExample("Make a recording of you saying: {sentence}", {"text": "{sentence}"}),
    ToolExample("Pronounce '{sentence}'", {"text": "{sentence}"}),
    ToolExample("Say this in your voice: {sentence}", {"text": "{sentence}"}),
    ToolExample("Turn this into speech: {sentence}", {"text": "{sentence}"}),
    ToolExample("I want to hear the sentence '{sentence}'", {"text": "{sentence}"}),
    ToolExample("Read out the following text: {sentence}", {"text": "{sentence}"}),
    ToolExample("Could you voice this line: {sentence}", {"text": "{sentence}"}),
    ToolExample("Announce out loud: {sentence}", {"text": "{sentence}"}),
    ToolExample("Make an audio clip that says '{sentence}'", {"text": "{sentence}"}),
    ToolExample("Say it out loud: {sentence}", {"text": "{sentence}"}),
    ToolExample("Can you say '{sentence}' out loud?", {"text": "{sentence}"}),
    ToolExample("Use your voice to say: {sentence}", {"text": "{sentence}"}),
    ToolExample("Speak up and say '{sentence}'", {"text": "{sentence}"}),
    ToolExample("I'd like to hear this spoken: {sentence}", {"text": "{sentence}"}),
    ToolExample("Give me an audio version of: {sentence}", {"text": "{sentence}"}),
    ToolExample("Produce a voice clip of '{sentence}'", {"text": "{sentence}"}),
    ToolExample("Could you read me this? {sentence}", {"text": "{sentence}"}),
    ToolExample("Talk this out for me: {sentence}", {"text": "{sentence}"}),
    ToolExample("Speak: {sentence}", {"text": "{sentence}"}),
    ToolExample("Recite this: {sentence}", {"text": "{sentence}"}),
)
DESCRIBE_VIDEO_EXAMPLES = (
    ToolExample("What happens in {video}?", {"video": "{video}"}),
    ToolExample("Describe the video {video}", {"video": "{video}"}),
    ToolExample("Summarise the clip {video} for me", {"video": "{video}"}),
    ToolExample("Watch {video} and tell me what goes on", {"video": "{video}"}),
    ToolExample("Give me a rundown of the footage in {video}", {"video": "{video}"}),
    ToolExample("What is going on in the recording {video}?", {"video": "{video}"}),
)
GENERATE_VIDEO_EXAMPLES = (
    ToolExample("Make a short video of {subject}", {"prompt": "{subject}"}),
    ToolExample("Generate a clip showing {subject}", {"prompt": "{subject}"}),
    ToolExample("Animate {subject}", {"prompt": "{subject}"}),
    ToolExample("Create a video of {subject}, {style}", {"prompt": "{subject}, {style}"}),
    ToolExample("I'd like a few seconds of video of {subject}", {"prompt": "{subject}"}),
)
GENERATE_3D_EXAMPLES = (
    ToolExample("Make a 3D model of {subject}", {"prompt": "{subject}"}),
    ToolExample("Create a 3D object of {subject}", {"prompt": "{subject}"}),
    ToolExample("Generate a mesh of {subject}", {"prompt": "{subject}"}),
    ToolExample("I need a 3D version of {subject} for my game", {"prompt": "{subject}"}),
    ToolExample("Turn {image} into a 3D model", {"image": "{image}"}),
)
REMEMBER_EXAMPLES = (
    ToolExample("Remember that {fact}", {"fact": "{fact}"}),
    ToolExample("Please keep in mind: {fact}", {"fact": "{fact}"}),
    ToolExample("Note that {fact}", {"fact": "{fact}"}),
    ToolExample("Don't forget that {fact}", {"fact": "{fact}"}),
    ToolExample("Save this for later: {fact}", {"fact": "{fact}"}),
    ToolExample("Keep a note: {fact}", {"fact": "{fact}"}),
    ToolExample("Store this fact about me: {fact}", {"fact": "{fact}"}),
    ToolExample("For next time, {fact}", {"fact": "{fact}"}),
    ToolExample("Write down that {fact}", {"fact": "{fact}"}),
    ToolExample("Make sure you remember: {fact}", {"fact": "{fact}"}),
    ToolExample("Log this fact: {fact}", {"fact": "{fact}"}),
    ToolExample("Commit this to memory: {fact}", {"fact": "{fact}"}),
    ToolExample("Hold on to this for me: {fact}", {"fact": "{fact}"}),
    ToolExample("Keep track of this: {fact}", {"fact": "{fact}"}),
    ToolExample("Record the fact that {fact}", {"fact": "{fact}"}),
    ToolExample("Save a memory: {fact}", {"fact": "{fact}"}),
    ToolExample("Just so you remember, {fact}", {"fact": "{fact}"}),
)
RECALL_EXAMPLES = (
    ToolExample("What did I tell you about {topic}?", {"query": "{topic}"}),
    ToolExample("Do you remember {topic}?", {"query": "{topic}"}),
    ToolExample("Remind me of {topic}", {"query": "{topic}"}),
    ToolExample("Look up what I said about {topic}", {"query": "{topic}"}),
    ToolExample("What do you remember about {topic}?", {"query": "{topic}"}),
    ToolExample("What was it I told you about {topic}?", {"query": "{topic}"}),
    ToolExample("Check your notes on {topic}", {"query": "{topic}"}),
    ToolExample("Did I mention {topic} before?", {"query": "{topic}"}),
    ToolExample("Can you recall {topic} for me?", {"query": "{topic}"}),
    ToolExample("What have I saved about {topic}?", {"query": "{topic}"}),
    ToolExample("Search your memory for {topic}", {"query": "{topic}"}),
    ToolExample("I told you {topic} once, what was it?", {"query": "{topic}"}),
    ToolExample("Do you still remember {topic}?", {"query": "{topic}"}),
    ToolExample("Pull up my note about {topic}", {"query": "{topic}"}),
    ToolExample("Any memory of {topic}?", {"query": "{topic}"}),
    ToolExample("Fetch what you stored on {topic}", {"query": "{topic}"}),
    ToolExample("What's stored about {topic}?", {"query": "{topic}"}),
    ToolExample("Can you look up {topic} in your notes?", {"query": "{topic}"}),
)

for _name, _examples in {"remember": REMEMBER_EXAMPLES, "recall": RECALL_EXAMPLES}.items():
    register_tool_examples(_name, _examples)  # long-term memory's tools are built outside the registry
