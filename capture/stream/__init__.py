"""Video in and out, live sources and the stage pipeline (the streaming backbone of capture.video/live).

    from capture.stream import VideoReader, VideoWriter, Pipeline
    with VideoReader("in.mp4") as reader, VideoWriter("out.mp4", reader.width, reader.height,
            fps=reader.fps, time_base=reader.time_base, audio_from="in.mp4") as writer:
        stats = Pipeline(reader, stages=[("flip", flip)], sink=writer.write_frame).run()
"""

from .pipeline import Pipeline, PipelineStats, StageStats
from .reader import Frame, VideoError, VideoReader

# camera and writer import PyAV at load time: loaded on first use, so that the package (the pipeline, Frame)
# imports on a machine without PyAV
_LAZY = {"LiveSource": "camera", "open_camera": "camera", "VideoWriter": "writer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Frame", "VideoError", "VideoReader", "VideoWriter", "LiveSource", "open_camera",
    "Pipeline", "PipelineStats", "StageStats",
]
