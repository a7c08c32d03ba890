"""Carriers of protocol datagrams: UDP natively, TCP with 2-byte length framing."""

from veilgate.transport.framing import FrameDecoder, FramingError, encode_frame

__all__ = ["FrameDecoder", "FramingError", "encode_frame"]
