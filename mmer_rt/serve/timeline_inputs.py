"""The inputs of POST /v1/timeline: the audio, and the RTTM and timed transcript as files the timeline can read."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import AudioError

TRANSCRIPT_SUFFIXES = (".vtt", ".srt", ".json")
TRUE = ("1", "true", "yes")


@dataclass
class TimelineInputs:
    audio: bytes
    rttm: Path | None
    transcript: Path | None
    channels_as_speakers: bool


@contextlib.asynccontextmanager
async def timeline_inputs(request, request_error, media_error):
    """Yield the request's TimelineInputs; the uploaded RTTM and transcript live in a temporary folder until the
    block ends (the timeline's readers take paths and report malformed lines by number)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    with tempfile.TemporaryDirectory(prefix="mmer-timeline-") as folder:
        if content_type == "multipart/form-data":
            async with request.form(max_files=3, max_fields=4) as form:
                upload = form.get("audio")
                if upload is None or isinstance(upload, str):
                    raise request_error("the multipart form needs a file field 'audio'")
                audio = await upload.read()
                rttm = await _saved(form.get("rttm"), Path(folder) / "turns.rttm", request_error)
                transcript = form.get("transcript")
                suffix = Path(getattr(transcript, "filename", "") or "").suffix.lower()
                if transcript is not None and suffix not in TRANSCRIPT_SUFFIXES:
                    raise request_error("the file field 'transcript' needs a file name ending in .vtt, .srt or .json")
                transcript = await _saved(transcript, Path(folder) / f"words{suffix}", request_error)
                flag = form.get("channels_as_speakers", "")
        elif content_type.startswith("audio/") or content_type == "application/octet-stream":
            audio, rttm, transcript = await request.body(), None, None
            flag = request.query_params.get("channels_as_speakers", "")
        else:
            raise media_error(f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                              "with a file field 'audio', or the audio file as an audio/* or "
                              "application/octet-stream body")
        if not audio:
            raise AudioError("the audio is empty: send the audio file's bytes")
        if not isinstance(flag, str) or flag.lower() not in TRUE + ("", "0", "false", "no"):
            raise request_error(f"channels_as_speakers must be true or false, got {flag!r}")
        yield TimelineInputs(audio, rttm, transcript, flag.lower() in TRUE)


async def _saved(upload, path: Path, request_error) -> Path | None:
    if upload is None:
        return None
    content = upload.encode("utf-8") if isinstance(upload, str) else await upload.read()
    path.write_bytes(content)
    return path
