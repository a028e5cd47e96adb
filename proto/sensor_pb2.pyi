from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RingMember(_message.Message):
    __slots__ = ("shard_id", "address", "state")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    shard_id: str
    address: str
    state: str
    def __init__(self, shard_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class RingMembers(_message.Message):
    __slots__ = ("members", "dynamic", "leg_headers")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_FIELD_NUMBER: _ClassVar[int]
    LEG_HEADERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[RingMember]
    dynamic: bool
    leg_headers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[_Union[RingMember, _Mapping]]] = ..., dynamic: _Optional[bool] = ..., leg_headers: _Optional[_Iterable[str]] = ...) -> None: ...

class SensorMessage(_message.Message):
    __slots__ = ("hello", "batch", "heartbeat", "end")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: Batch
    heartbeat: Heartbeat
    end: EndOfCapture
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., end: _Optional[_Union[EndOfCapture, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("sensor_id", "site", "version", "interfaces", "session", "mode", "acked_seq", "ring", "clock_ns")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    site: str
    version: str
    interfaces: _containers.RepeatedScalarFieldContainer[str]
    session: str
    mode: str
    acked_seq: int
    ring: _containers.RepeatedScalarFieldContainer[str]
    clock_ns: int
    def __init__(self, sensor_id: _Optional[str] = ..., site: _Optional[str] = ..., version: _Optional[str] = ..., interfaces: _Optional[_Iterable[str]] = ..., session: _Optional[str] = ..., mode: _Optional[str] = ..., acked_seq: _Optional[int] = ..., ring: _Optional[_Iterable[str]] = ..., clock_ns: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("seq", "sensor_id", "linktype", "timestamps_ns", "lengths", "data", "wire_lengths", "broadcast", "first_ns", "ts_deltas_ns", "zstd")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    LINKTYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIRE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    FIRST_NS_FIELD_NUMBER: _ClassVar[int]
    TS_DELTAS_NS_FIELD_NUMBER: _ClassVar[int]
    ZSTD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sensor_id: str
    linktype: int
    timestamps_ns: _containers.RepeatedScalarFieldContainer[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    wire_lengths: _containers.RepeatedScalarFieldContainer[int]
    broadcast: bool
    first_ns: int
    ts_deltas_ns: _containers.RepeatedScalarFieldContainer[int]
    zstd: bool
    def __init__(self, seq: _Optional[int] = ..., sensor_id: _Optional[str] = ..., linktype: _Optional[int] = ..., timestamps_ns: _Optional[_Iterable[int]] = ..., lengths: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., wire_lengths: _Optional[_Iterable[int]] = ..., broadcast: _Optional[bool] = ..., first_ns: _Optional[int] = ..., ts_deltas_ns: _Optional[_Iterable[int]] = ..., zstd: _Optional[bool] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("captured", "forwarded", "filtered", "decode_errors", "kernel_drops", "interface_drops", "queue_drops", "send_queue", "batches_sent", "batches_acked", "reconnects", "backlog_drops", "expected_flows", "rtp_heuristic_flows", "rtp_heuristic_packets", "sip_tls_flows", "sip_tls_packets", "sdp_endpoints_refused", "media_not_rtp")
    CAPTURED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    DECODE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_DROPS_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_DROPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DROPS_FIELD_NUMBER: _ClassVar[int]
    SEND_QUEUE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SENT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_ACKED_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_DROPS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FLOWS_FIELD_NUMBER: _ClassVar[int]
    RTP_HEURISTIC_FLOWS_FIELD_NUMBER: _ClassVar[int]
    RTP_HEURISTIC_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SIP_TLS_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SIP_TLS_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SDP_ENDPOINTS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    MEDIA_NOT_RTP_FIELD_NUMBER: _ClassVar[int]
    captured: int
    forwarded: int
    filtered: int
    decode_errors: int
    kernel_drops: int
    interface_drops: int
    queue_drops: int
    send_queue: int
    batches_sent: int
    batches_acked: int
    reconnects: int
    backlog_drops: int
    expected_flows: int
    rtp_heuristic_flows: int
    rtp_heuristic_packets: int
    sip_tls_flows: int
    sip_tls_packets: int
    sdp_endpoints_refused: int
    media_not_rtp: int
    def __init__(self, captured: _Optional[int] = ..., forwarded: _Optional[int] = ..., filtered: _Optional[int] = ..., decode_errors: _Optional[int] = ..., kernel_drops: _Optional[int] = ..., interface_drops: _Optional[int] = ..., queue_drops: _Optional[int] = ..., send_queue: _Optional[int] = ..., batches_sent: _Optional[int] = ..., batches_acked: _Optional[int] = ..., reconnects: _Optional[int] = ..., backlog_drops: _Optional[int] = ..., expected_flows: _Optional[int] = ..., rtp_heuristic_flows: _Optional[int] = ..., rtp_heuristic_packets: _Optional[int] = ..., sip_tls_flows: _Optional[int] = ..., sip_tls_packets: _Optional[int] = ..., sdp_endpoints_refused: _Optional[int] = ..., media_not_rtp: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sensor_id", "clock_ns", "counters", "replay_bytes", "replay_total")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLAY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    clock_ns: int
    counters: Counters
    replay_bytes: int
    replay_total: int
    def __init__(self, sensor_id: _Optional[str] = ..., clock_ns: _Optional[int] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., replay_bytes: _Optional[int] = ..., replay_total: _Optional[int] = ...) -> None: ...

class EndOfCapture(_message.Message):
    __slots__ = ("sensor_id", "last_seq", "counters", "error")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    last_seq: int
    counters: Counters
    error: str
    def __init__(self, sensor_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("ack", "notice", "expect")
    ACK_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    notice: Notice
    expect: Expect
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., expect: _Optional[_Union[Expect, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("text", "capture_done")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_DONE_FIELD_NUMBER: _ClassVar[int]
    text: str
    capture_done: bool
    def __init__(self, text: _Optional[str] = ..., capture_done: _Optional[bool] = ...) -> None: ...

class Expect(_message.Message):
    __slots__ = ("flows",)
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[MediaFlow]
    def __init__(self, flows: _Optional[_Iterable[_Union[MediaFlow, _Mapping]]] = ...) -> None: ...

class MediaFlow(_message.Message):
    __slots__ = ("addr", "port")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    addr: bytes
    port: int
    def __init__(self, addr: _Optional[bytes] = ..., port: _Optional[int] = ...) -> None: ...
