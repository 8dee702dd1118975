"""Lambda's package size limits, and the layer's own size goal."""

from __future__ import annotations

from dataclasses import dataclass

from layer_build.errors import SizeLimitError

MIB = 1024 * 1024
#: What kafka-relay aims for: a layer small enough to add little to cold starts.
LAYER_GOAL_ZIPPED = 8 * MIB
#: Largest zip Lambda accepts inline (ZipFile) in PublishLayerVersion / CreateFunction.
DIRECT_UPLOAD_LIMIT = 50 * MIB
#: Largest unzipped size of a function and all its layers together.
UNZIPPED_LIMIT = 250 * MIB


def mib(size: int) -> str:
    return f"{size / MIB:.2f} MB"


@dataclass(frozen=True)
class SizeReport:
    name: str
    zipped_bytes: int
    unzipped_bytes: int
    goal_bytes: int | None = None

    @property
    def within_goal(self) -> bool:
        return self.goal_bytes is None or self.zipped_bytes <= self.goal_bytes

    def line(self) -> str:
        text = f"{self.name}: {mib(self.zipped_bytes)} zipped, {mib(self.unzipped_bytes)} unzipped"
        if self.goal_bytes is not None:
            verdict = "OK" if self.within_goal else "over"
            text += f" (goal <= {mib(self.goal_bytes)} zipped: {verdict})"
        return text


def check_size(
    name: str, *, zipped_bytes: int, unzipped_bytes: int, goal_bytes: int | None = None
) -> SizeReport:
    """Report against the goal; raise past the limits Lambda enforces."""
    if zipped_bytes > DIRECT_UPLOAD_LIMIT:
        raise SizeLimitError(
            f"{name} is {mib(zipped_bytes)} zipped, past Lambda's {mib(DIRECT_UPLOAD_LIMIT)} "
            "limit for direct uploads: drop dependencies from it (or upload it through S3)"
        )
    if unzipped_bytes > UNZIPPED_LIMIT:
        raise SizeLimitError(
            f"{name} is {mib(unzipped_bytes)} unzipped, past Lambda's {mib(UNZIPPED_LIMIT)} "
            "limit for a function and its layers: drop dependencies from it"
        )
    return SizeReport(name, zipped_bytes, unzipped_bytes, goal_bytes)


def check_combined(names: tuple[str, ...], unzipped_bytes: int) -> None:
    """A function and its layers share one unzipped limit."""
    if unzipped_bytes > UNZIPPED_LIMIT:
        raise SizeLimitError(
            f"{' + '.join(names)} unzip to {mib(unzipped_bytes)} together, past Lambda's "
            f"{mib(UNZIPPED_LIMIT)} limit for a function and its layers: drop dependencies"
        )
