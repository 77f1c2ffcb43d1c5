"""What one run of the image index did: counts, and the files it skipped or could not caption."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


def not_captioned(path: str, reason: str, folder: str) -> SkippedFile:
    """The report's entry for an image that stays indexed without a caption, saying how to retry."""
    return SkippedFile(path, f"{reason}; it stays indexed without a caption: run `llava-agent index {folder} "
                             "--captions` again to caption it")


@dataclass
class IndexReport:
    """What one :func:`index_images` run did; counts are numbers of files."""

    folder: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    captioning: bool = False  # whether a captioner was given
    captioned: int = 0  # images given a caption, new or indexed earlier without one
    uncaptioned: list[SkippedFile] = field(default_factory=list)  # indexed, but their caption failed

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    def summary(self) -> str:
        text = (
            f"{self.folder}: {self.added} added, {self.updated} updated, {self.removed} removed, "
            f"{self.unchanged} unchanged, {len(self.skipped)} skipped"
            + (f", {self.captioned} captioned" if self.captioning else "")
            + f" in {self.seconds:.1f} s"
        )
        return (text + "".join(f"\n  skipped {s.path}: {s.reason}" for s in self.skipped)
                + "".join(f"\n  not captioned {s.path}: {s.reason}" for s in self.uncaptioned))


__all__ = ["IndexReport", "SkippedFile", "not_captioned"]
