"""Video files for ``codetr predict``, through PyAV (the optional extra ``codetr[video]``).

``read_video`` decodes a file's first video stream to uint8 [3, H, W] RGB frames; ``write_video``
encodes frames to an H.264 MP4 at a given frame rate, atomically. Any failure to open or decode
a video is a ``VideoReadError`` naming the file, so that predict can skip it like an unreadable
image.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from .checkpoint import atomic_open

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})   # files taken as videos


class VideoReadError(ValueError):
    """A video file that cannot be opened or decoded (corrupt, no video stream, no frames)."""


def require_av(path: Path):
    """The ``av`` module; without it a one-line ValueError naming ``path`` and the install command."""
    try:
        import av
    except ImportError:
        raise ValueError(f"{str(path)!r} is a video, and reading videos needs PyAV: "
                         f'pip install "codetr[video]"') from None
    return av


@dataclass(frozen=True)
class Video:
    """An open video: its frame rate, frame size, frame count (None when the file does not say)
    and an iterator over its decoded uint8 [3, H, W] RGB frames."""
    fps: Fraction
    width: int
    height: int
    num_frames: int | None
    frames: Iterator[torch.Tensor]


@contextmanager
def read_video(path: Path) -> Iterator[Video]:
    """Open ``path`` and decode its first video stream lazily; every frame comes at the stream's
    size. Raises VideoReadError when the file does not open, has no video stream or frame rate,
    fails to decode, or holds no frame."""
    av = require_av(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise VideoReadError(f"cannot open video {str(path)!r}: {e.strerror or e}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate
        if not fps:
            raise VideoReadError(f"{str(path)!r} does not give its frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height

        def frames() -> Iterator[torch.Tensor]:
            count = 0
            try:
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                    count += 1
                    yield torch.from_numpy(rgb).permute(2, 0, 1)
            except av.FFmpegError as e:
                raise VideoReadError(f"cannot decode video {str(path)!r} after {count} frames: "
                                     f"{e.strerror or e}") from None
            if not count:
                raise VideoReadError(f"no frame decodes in video {str(path)!r}")

        yield Video(Fraction(fps), width, height, stream.frames or None, frames())


@contextmanager
def write_video(path: Path, fps: Fraction, width: int, height: int) -> Iterator[Callable[[Image.Image], None]]:
    """A function that appends an RGB PIL image of ``width`` x ``height`` to an H.264 MP4 at
    ``fps``. ``path`` appears only when the block ends without an error. Even sizes are encoded
    as yuv420p (plays everywhere); H.264's 4:2:0 needs even sizes, so odd ones keep their size
    as yuv444p."""
    av = require_av(path)
    with atomic_open(path, "wb") as f, av.open(f, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"

        def write(image: Image.Image) -> None:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))

        yield write
        container.mux(stream.encode())   # flush the encoder's delayed frames
