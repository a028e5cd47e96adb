from proto import sensor_pb2 as _sensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SensorStatus(_message.Message):
    __slots__ = ("sensor_id", "site", "version", "state", "last_seen_ns", "counters", "duplicates_dropped", "mode", "link", "peer", "identity", "connected_since_ns", "last_heartbeat_ns", "captured_per_s", "forwarded_per_s", "packets_received", "replay_bytes", "replay_total", "error", "registered", "clock_offset_ns", "clock_corrected", "heartbeats_refused", "packets_refused", "merge", "merge_stalls", "merge_held", "clock_steps", "clock_restamped", "outside_site")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_NS_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_PER_S_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_PER_S_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLAY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    MERGE_STALLS_FIELD_NUMBER: _ClassVar[int]
    MERGE_HELD_FIELD_NUMBER: _ClassVar[int]
    CLOCK_STEPS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RESTAMPED_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_SITE_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    site: str
    version: str
    state: str
    last_seen_ns: int
    counters: _sensor_pb2.Counters
    duplicates_dropped: int
    mode: str
    link: str
    peer: str
    identity: str
    connected_since_ns: int
    last_heartbeat_ns: int
    captured_per_s: float
    forwarded_per_s: float
    packets_received: int
    replay_bytes: int
    replay_total: int
    error: str
    registered: bool
    clock_offset_ns: int
    clock_corrected: int
    heartbeats_refused: int
    packets_refused: int
    merge: str
    merge_stalls: int
    merge_held: int
    clock_steps: int
    clock_restamped: int
    outside_site: int
    def __init__(self, sensor_id: _Optional[str] = ..., site: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., last_seen_ns: _Optional[int] = ..., counters: _Optional[_Union[_sensor_pb2.Counters, _Mapping]] = ..., duplicates_dropped: _Optional[int] = ..., mode: _Optional[str] = ..., link: _Optional[str] = ..., peer: _Optional[str] = ..., identity: _Optional[str] = ..., connected_since_ns: _Optional[int] = ..., last_heartbeat_ns: _Optional[int] = ..., captured_per_s: _Optional[float] = ..., forwarded_per_s: _Optional[float] = ..., packets_received: _Optional[int] = ..., replay_bytes: _Optional[int] = ..., replay_total: _Optional[int] = ..., error: _Optional[str] = ..., registered: _Optional[bool] = ..., clock_offset_ns: _Optional[int] = ..., clock_corrected: _Optional[int] = ..., heartbeats_refused: _Optional[int] = ..., packets_refused: _Optional[int] = ..., merge: _Optional[str] = ..., merge_stalls: _Optional[int] = ..., merge_held: _Optional[int] = ..., clock_steps: _Optional[int] = ..., clock_restamped: _Optional[int] = ..., outside_site: _Optional[int] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("role", "id", "site", "version", "address", "started_at", "interfaces")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    role: str
    id: str
    site: str
    version: str
    address: str
    started_at: str
    interfaces: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, role: _Optional[str] = ..., id: _Optional[str] = ..., site: _Optional[str] = ..., version: _Optional[str] = ..., address: _Optional[str] = ..., started_at: _Optional[str] = ..., interfaces: _Optional[_Iterable[str]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("controller_id", "version", "sensors", "active_calls", "recordings_written", "storage_errors", "decode_errors", "duplicates_dropped", "packets_in", "bad_batches", "storage", "registry_state", "members", "storage_pending", "storage_retries", "unsignalled_media", "authz_refused", "tls_handshakes_failed", "shard_id", "ring", "not_owned_packets", "ring_refused", "shard_members", "index", "indexed", "index_pending", "index_errors")
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    RECORDINGS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    STORAGE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DECODE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    BAD_BATCHES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_STATE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PENDING_FIELD_NUMBER: _ClassVar[int]
    STORAGE_RETRIES_FIELD_NUMBER: _ClassVar[int]
    UNSIGNALLED_MEDIA_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_REFUSED_FIELD_NUMBER: _ClassVar[int]
    TLS_HANDSHAKES_FAILED_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    NOT_OWNED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RING_REFUSED_FIELD_NUMBER: _ClassVar[int]
    SHARD_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    INDEX_PENDING_FIELD_NUMBER: _ClassVar[int]
    INDEX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    controller_id: str
    version: str
    sensors: _containers.RepeatedCompositeFieldContainer[SensorStatus]
    active_calls: int
    recordings_written: int
    storage_errors: int
    decode_errors: int
    duplicates_dropped: int
    packets_in: int
    bad_batches: int
    storage: str
    registry_state: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    storage_pending: int
    storage_retries: int
    unsignalled_media: UnsignalledMedia
    authz_refused: int
    tls_handshakes_failed: int
    shard_id: str
    ring: _containers.RepeatedScalarFieldContainer[str]
    not_owned_packets: int
    ring_refused: int
    shard_members: _containers.RepeatedCompositeFieldContainer[ShardMember]
    index: str
    indexed: int
    index_pending: int
    index_errors: int
    def __init__(self, controller_id: _Optional[str] = ..., version: _Optional[str] = ..., sensors: _Optional[_Iterable[_Union[SensorStatus, _Mapping]]] = ..., active_calls: _Optional[int] = ..., recordings_written: _Optional[int] = ..., storage_errors: _Optional[int] = ..., decode_errors: _Optional[int] = ..., duplicates_dropped: _Optional[int] = ..., packets_in: _Optional[int] = ..., bad_batches: _Optional[int] = ..., storage: _Optional[str] = ..., registry_state: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., storage_pending: _Optional[int] = ..., storage_retries: _Optional[int] = ..., unsignalled_media: _Optional[_Union[UnsignalledMedia, _Mapping]] = ..., authz_refused: _Optional[int] = ..., tls_handshakes_failed: _Optional[int] = ..., shard_id: _Optional[str] = ..., ring: _Optional[_Iterable[str]] = ..., not_owned_packets: _Optional[int] = ..., ring_refused: _Optional[int] = ..., shard_members: _Optional[_Iterable[_Union[ShardMember, _Mapping]]] = ..., index: _Optional[str] = ..., indexed: _Optional[int] = ..., index_pending: _Optional[int] = ..., index_errors: _Optional[int] = ...) -> None: ...

class ShardMember(_message.Message):
    __slots__ = ("shard_id", "address")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    shard_id: str
    address: str
    def __init__(self, shard_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class UnsignalledMedia(_message.Message):
    __slots__ = ("flows", "packets", "ambiguous_packets", "sip_tls_packets", "sip_tls_flows", "likely_cause")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    AMBIGUOUS_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SIP_TLS_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SIP_TLS_FLOWS_FIELD_NUMBER: _ClassVar[int]
    LIKELY_CAUSE_FIELD_NUMBER: _ClassVar[int]
    flows: int
    packets: int
    ambiguous_packets: int
    sip_tls_packets: int
    sip_tls_flows: int
    likely_cause: str
    def __init__(self, flows: _Optional[int] = ..., packets: _Optional[int] = ..., ambiguous_packets: _Optional[int] = ..., sip_tls_packets: _Optional[int] = ..., sip_tls_flows: _Optional[int] = ..., likely_cause: _Optional[str] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ("active_only", "limit", "page_token")
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    active_only: bool
    limit: int
    page_token: str
    def __init__(self, active_only: _Optional[bool] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class CallSummary(_message.Message):
    __slots__ = ("id", "call_ids", "from_uri", "to_uri", "status", "started_at", "ended_at", "active", "location", "answered_at", "end_reason", "final_response", "packets")
    ID_FIELD_NUMBER: _ClassVar[int]
    CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    FROM_URI_FIELD_NUMBER: _ClassVar[int]
    TO_URI_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    FINAL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    id: str
    call_ids: _containers.RepeatedScalarFieldContainer[str]
    from_uri: str
    to_uri: str
    status: str
    started_at: str
    ended_at: str
    active: bool
    location: str
    answered_at: str
    end_reason: str
    final_response: int
    packets: int
    def __init__(self, id: _Optional[str] = ..., call_ids: _Optional[_Iterable[str]] = ..., from_uri: _Optional[str] = ..., to_uri: _Optional[str] = ..., status: _Optional[str] = ..., started_at: _Optional[str] = ..., ended_at: _Optional[str] = ..., active: _Optional[bool] = ..., location: _Optional[str] = ..., answered_at: _Optional[str] = ..., end_reason: _Optional[str] = ..., final_response: _Optional[int] = ..., packets: _Optional[int] = ...) -> None: ...

class CallList(_message.Message):
    __slots__ = ("calls", "next_page_token", "active_total")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallSummary]
    next_page_token: str
    active_total: int
    def __init__(self, calls: _Optional[_Iterable[_Union[CallSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., active_total: _Optional[int] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CallDetail(_message.Message):
    __slots__ = ("summary", "call_json", "files")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CALL_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    summary: CallSummary
    call_json: str
    files: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, summary: _Optional[_Union[CallSummary, _Mapping]] = ..., call_json: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRecordingFileRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "offset", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...
