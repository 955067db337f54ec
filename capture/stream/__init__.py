"""Video in and out, live sources and the stage pipeline (the streaming backbone of capture.video/live).

    from capture.stream import VideoReader, VideoWriter, Pipeline
    with VideoReader("in.mp4") as reader, VideoWriter("out.mp4", reader.width, reader.height,
            fps=reader.fps, time_base=reader.time_base, audio_from="in.mp4") as writer:
        stats = Pipeline(reader, stages=[("flip", flip)], sink=writer.write_frame).run()
"""

from .camera import LiveSource, open_camera
from .pipeline import Pipeline, PipelineStats, StageStats
from .reader import Frame, VideoError, VideoReader
from .writer import VideoWriter

__all__ = [
    "Frame", "VideoError", "VideoReader", "VideoWriter", "LiveSource", "open_camera",
    "Pipeline", "PipelineStats", "StageStats",
]
