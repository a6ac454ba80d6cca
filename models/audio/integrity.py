"""How whole an input is: the length its header declares, and damage met while decoding.

FFmpeg reports a duration for most files, but not always one the file declares: for raw
ADTS AAC and for an MP3 without a Xing/Info/VBRI frame it is a guess from the bitrate, and
for a WAV whose data chunk claims more than the file holds it is cut to the file's size. A
guess says nothing about truncation, so `declared_duration` keeps only lengths a header
states: the WAV data chunk's size (read here, from the file's first bytes), FLAC's
STREAMINFO, an MP3's VBR tag, the MP4 and Matroska durations. Ogg declares none: FFmpeg
reads the last granule position of the file as it is, so a cut Ogg file looks whole and
decodes without a warning. `Tally` counts what went wrong while decoding, and
`integrity_warnings` turns a decoded track that falls short of its declaration, damaged
packets, a demuxing error and bytes skipped before an MP3's first frame into sentences a
user can act on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import av
from av.audio.stream import AudioStream
from av.container import InputContainer

# Containers declare lengths that include codec priming (an Opus pre-skip, an MP4 edit
# list rounded to whole packets), so a shortfall this small is no sign of damage.
SHORTFALL_TOLERANCE_S = 0.1

# How much of a WAV file is read for its chunk headers: broadcast WAVs put bext, iXML and
# JUNK chunks before the data, a few kilobytes in all. A data chunk that starts later is
# not looked for: that file's length counts as undeclared, so a cut is not reported.
WAV_HEAD_BYTES = 64 * 1024

# FFmpeg's demuxers for which it computes a length from the bitrate, never from a header.
_NEVER_DECLARED = frozenset({"aac"})

# Files may chain ID3v2 tags; more than this is no real file, and a crafted chain of empty
# tags must not make reading the head walk the whole upload ten bytes at a time.
MAX_ID3V2_TAGS = 8

# Demuxers that search for the first frame past any junk: MP3 and ADTS AAC.
_RESYNCING = frozenset({"mp3", "aac"})

# A WAV data chunk of these sizes says "unknown": streaming writers fill it in at the end,
# or never.
_UNKNOWN_WAV_SIZES = frozenset({0, 0xFFFFFFFF})


@dataclass(frozen=True)
class WavHeader:
    """What a RIFF/WAVE header says: the codec's format tag and the data chunk's length."""

    format_tag: int
    block_align: int
    data_bytes: int | None  # None when the header leaves it unknown


@dataclass(frozen=True)
class Head:
    """Facts from an input's first bytes, read before FFmpeg opens it."""

    wav: WavHeader | None
    audio_start: int  # offset after any ID3v2 tags, where an MP3's first frame belongs
    frame_at_start: bool  # an MPEG audio frame header sits at `audio_start`


@dataclass
class Tally:
    """What went wrong while demuxing and decoding a stream."""

    packets: int = 0
    failed_packets: int = 0
    last_packet_failed: bool = False
    stopped_by_error: bool = False  # a demuxing error ended the stream before its end
    first_packet_pos: int | None = None

    def packet(self, position: int | None, *, failed: bool) -> None:
        """Count one packet with data."""
        if self.packets == 0:
            self.first_packet_pos = position
        self.packets += 1
        self.failed_packets += failed
        self.last_packet_failed = failed


def read_head(data: BinaryIO) -> Head:
    """Read the header facts of `data`, then rewind it for FFmpeg."""
    try:
        head = data.read(WAV_HEAD_BYTES)
        audio_start = _skip_id3v2(data, head)
        data.seek(audio_start)
        frame_at_start = _is_mpeg_frame_header(data.read(2))
    finally:
        data.seek(0)
    return Head(wav=_wav_header(head), audio_start=audio_start, frame_at_start=frame_at_start)


def declared_duration(
    container: InputContainer, stream: AudioStream, head: Head, first_packet_pos: int | None
) -> float | None:
    """Seconds of audio the file's header declares; None when it declares none.

    `first_packet_pos` (the byte offset of the stream's first packet) tells whether
    FFmpeg read an MP3's first frame as a VBR tag, the only MP3 header with a length.
    """
    fmt = container.format.name
    if fmt in _NEVER_DECLARED:
        return None
    if fmt == "wav":
        return _wav_duration(stream, head.wav)
    if fmt == "mp3" and not _mp3_has_vbr_tag(head, first_packet_pos):
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def skipped_leading_bytes(container: InputContainer, head: Head, tally: Tally) -> int:
    """Bytes FFmpeg skipped before the first frame of an MP3 or ADTS AAC file: not a tag,
    so the file does not begin with audio (its beginning is likely missing). 0 for other
    formats, whose demuxers refuse such a file."""
    if container.format.name not in _RESYNCING or head.frame_at_start:
        return 0
    if tally.first_packet_pos is None:
        return 0
    return max(0, tally.first_packet_pos - head.audio_start)


def integrity_warnings(
    decoded_s: float, declared_s: float | None, tally: Tally, skipped_bytes: int
) -> tuple[str, ...]:
    """What a user should know about an input that decoded, but not whole."""
    warnings = []
    if skipped_bytes:
        warnings.append(
            f"the input does not begin with audio: {skipped_bytes} bytes before its first "
            "frame were skipped; the beginning of the file may be missing"
        )
    short = declared_s is not None and declared_s - decoded_s > SHORTFALL_TOLERANCE_S
    failed = tally.failed_packets
    if tally.last_packet_failed and (short or not tally.stopped_by_error):
        # A packet cut off at the end of the data is the truncation itself, said once.
        failed -= 1
        if not short:
            warnings.append(
                "the input ends in the middle of a packet, so it looks truncated; "
                f"the stems cover the {decoded_s:.1f} s decoded"
            )
    if failed:
        packets = "1 damaged packet was" if failed == 1 else f"{failed} damaged packets were"
        warnings.append(f"{packets} left out: the input could not be decoded there")
    if tally.stopped_by_error:
        warnings.append(
            f"the input's data is damaged after {decoded_s:.1f} s; decoding stopped there "
            "and the stems cover that part"
        )
    if short:
        warnings.append(
            f"the input is shorter than its header declares: {decoded_s:.1f} s of audio "
            f"decoded of the {declared_s:.1f} s declared; the stems cover the decoded part"
        )
    return tuple(warnings)


def codec_description(container: InputContainer, head: Head) -> str:
    """How a message names a codec that this build has no decoder for: FFmpeg gives no
    name then, so a WAV's format tag is the best there is."""
    if container.format.name == "wav" and head.wav is not None:
        return f"WAVE format tag 0x{head.wav.format_tag:04X}"
    return "one this build does not know"


def _wav_duration(stream: AudioStream, wav: WavHeader | None) -> float | None:
    """The length a WAV data chunk declares, for PCM (where bytes map to frames)."""
    context = stream.codec_context
    if wav is None or wav.data_bytes is None or wav.block_align <= 0:
        return None
    if not context.name.startswith("pcm_") or context.sample_rate <= 0:
        return None
    return wav.data_bytes // wav.block_align / context.sample_rate


def _mp3_has_vbr_tag(head: Head, first_packet_pos: int | None) -> bool:
    """Whether FFmpeg took the frame at the audio start as a Xing/Info/VBRI tag: it then
    starts the stream at the frame after it."""
    return (
        head.frame_at_start and first_packet_pos is not None and first_packet_pos > head.audio_start
    )


def _skip_id3v2(data: BinaryIO, head: bytes) -> int:
    """The offset after the ID3v2 tags at the start of `data` (0 if none)."""
    offset = 0
    for _ in range(MAX_ID3V2_TAGS):
        tag = head[offset : offset + 10] if offset + 10 <= len(head) else _read_at(data, offset)
        if len(tag) < 10 or tag[:3] != b"ID3" or any(byte & 0x80 for byte in tag[6:10]):
            break
        size = (tag[6] << 21) | (tag[7] << 14) | (tag[8] << 7) | tag[9]
        footer = 10 if tag[5] & 0x10 else 0
        offset += 10 + size + footer
    return offset


def _read_at(data: BinaryIO, offset: int) -> bytes:
    data.seek(offset)
    return data.read(10)


def _is_mpeg_frame_header(start: bytes) -> bool:
    """Whether two bytes begin an MPEG audio or ADTS frame (their sync words share these
    11 bits)."""
    return len(start) == 2 and start[0] == 0xFF and start[1] & 0xE0 == 0xE0


def _wav_header(head: bytes) -> WavHeader | None:
    """The format tag and data length of a RIFF/WAVE file's first bytes; None if they are
    not one, or its fmt and data chunks are not within them."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    fmt: tuple[int, int] | None = None
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if chunk == b"fmt " and body + 14 <= len(head):
            tag, _channels, _rate, _byte_rate, block_align = struct.unpack_from(
                "<HHIIH", head, body
            )
            fmt = (tag, block_align)
        elif chunk == b"data":
            if fmt is None:
                return None
            data_bytes = None if size in _UNKNOWN_WAV_SIZES else size
            return WavHeader(format_tag=fmt[0], block_align=fmt[1], data_bytes=data_bytes)
        offset = body + size + (size & 1)  # chunks are padded to an even length
    return None
