from proto import sensor_pb2 as _sensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldRequest(_message.Message):
    __slots__ = ("ids", "number", "since", "until", "reason", "release")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    number: str
    since: str
    until: str
    reason: str
    release: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., number: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., reason: _Optional[str] = ..., release: _Optional[bool] = ...) -> None: ...

class EraseRequest(_message.Message):
    __slots__ = ("ids", "number", "reason")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    number: str
    reason: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., number: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LifecycleOutcome(_message.Message):
    __slots__ = ("recording_id", "done", "what", "reason")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    done: bool
    what: str
    reason: str
    def __init__(self, recording_id: _Optional[str] = ..., done: _Optional[bool] = ..., what: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LifecycleResult(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[LifecycleOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[LifecycleOutcome, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("ids", "since")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    since: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., since: _Optional[str] = ...) -> None: ...

class RecordingCheck(_message.Message):
    __slots__ = ("recording_id", "ok", "problems", "key_id")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    ok: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    key_id: str
    def __init__(self, recording_id: _Optional[str] = ..., ok: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., key_id: _Optional[str] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("checks", "checked", "failed")
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[RecordingCheck]
    checked: int
    failed: int
    def __init__(self, checks: _Optional[_Iterable[_Union[RecordingCheck, _Mapping]]] = ..., checked: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("since", "until", "number", "from_number", "to_number", "match", "call_id", "status", "min_duration_s", "max_duration_s", "site", "sensor", "codec", "mos_below", "has_dtmf", "has_hold", "sort", "limit", "offset")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FROM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TO_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MOS_BELOW_FIELD_NUMBER: _ClassVar[int]
    HAS_DTMF_FIELD_NUMBER: _ClassVar[int]
    HAS_HOLD_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    since: str
    until: str
    number: str
    from_number: str
    to_number: str
    match: str
    call_id: str
    status: str
    min_duration_s: float
    max_duration_s: float
    site: str
    sensor: str
    codec: str
    mos_below: float
    has_dtmf: bool
    has_hold: bool
    sort: str
    limit: int
    offset: int
    def __init__(self, since: _Optional[str] = ..., until: _Optional[str] = ..., number: _Optional[str] = ..., from_number: _Optional[str] = ..., to_number: _Optional[str] = ..., match: _Optional[str] = ..., call_id: _Optional[str] = ..., status: _Optional[str] = ..., min_duration_s: _Optional[float] = ..., max_duration_s: _Optional[float] = ..., site: _Optional[str] = ..., sensor: _Optional[str] = ..., codec: _Optional[str] = ..., mos_below: _Optional[float] = ..., has_dtmf: _Optional[bool] = ..., has_hold: _Optional[bool] = ..., sort: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class IndexedCall(_message.Message):
    __slots__ = ("id", "prefix", "location", "started_at", "answered_at", "ended_at", "duration_s", "from_uri", "to_uri", "from_number", "to_number", "call_ids", "status", "final_response", "end_reason", "recorded", "encrypted", "has_dtmf", "has_hold", "codecs", "sensors", "sites", "mos_caller", "mos_callee", "loss_caller", "loss_callee")
    ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FROM_URI_FIELD_NUMBER: _ClassVar[int]
    TO_URI_FIELD_NUMBER: _ClassVar[int]
    FROM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TO_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    HAS_DTMF_FIELD_NUMBER: _ClassVar[int]
    HAS_HOLD_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    MOS_CALLER_FIELD_NUMBER: _ClassVar[int]
    MOS_CALLEE_FIELD_NUMBER: _ClassVar[int]
    LOSS_CALLER_FIELD_NUMBER: _ClassVar[int]
    LOSS_CALLEE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prefix: str
    location: str
    started_at: str
    answered_at: str
    ended_at: str
    duration_s: float
    from_uri: str
    to_uri: str
    from_number: str
    to_number: str
    call_ids: _containers.RepeatedScalarFieldContainer[str]
    status: str
    final_response: int
    end_reason: str
    recorded: bool
    encrypted: bool
    has_dtmf: bool
    has_hold: bool
    codecs: _containers.RepeatedScalarFieldContainer[str]
    sensors: _containers.RepeatedScalarFieldContainer[str]
    sites: _containers.RepeatedScalarFieldContainer[str]
    mos_caller: float
    mos_callee: float
    loss_caller: float
    loss_callee: float
    def __init__(self, id: _Optional[str] = ..., prefix: _Optional[str] = ..., location: _Optional[str] = ..., started_at: _Optional[str] = ..., answered_at: _Optional[str] = ..., ended_at: _Optional[str] = ..., duration_s: _Optional[float] = ..., from_uri: _Optional[str] = ..., to_uri: _Optional[str] = ..., from_number: _Optional[str] = ..., to_number: _Optional[str] = ..., call_ids: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ..., final_response: _Optional[int] = ..., end_reason: _Optional[str] = ..., recorded: _Optional[bool] = ..., encrypted: _Optional[bool] = ..., has_dtmf: _Optional[bool] = ..., has_hold: _Optional[bool] = ..., codecs: _Optional[_Iterable[str]] = ..., sensors: _Optional[_Iterable[str]] = ..., sites: _Optional[_Iterable[str]] = ..., mos_caller: _Optional[float] = ..., mos_callee: _Optional[float] = ..., loss_caller: _Optional[float] = ..., loss_callee: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("calls", "total", "offset", "limit")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[IndexedCall]
    total: int
    offset: int
    limit: int
    def __init__(self, calls: _Optional[_Iterable[_Union[IndexedCall, _Mapping]]] = ..., total: _Optional[int] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("since", "limit", "offset", "recording_id")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    since: str
    limit: int
    offset: int
    recording_id: str
    def __init__(self, since: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., recording_id: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "at", "actor", "role", "action", "recording_id", "address", "detail_json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: str
    actor: str
    role: str
    action: str
    recording_id: str
    address: str
    detail_json: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[str] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., recording_id: _Optional[str] = ..., address: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class AuditList(_message.Message):
    __slots__ = ("entries", "checked", "broken_at")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    BROKEN_AT_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    checked: int
    broken_at: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., checked: _Optional[int] = ..., broken_at: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("controller_id", "version", "sensors", "active_calls", "recordings_written", "storage_errors", "decode_errors", "duplicates_dropped", "packets_in", "bad_batches", "storage", "registry_state", "members", "storage_pending", "storage_retries", "unsignalled_media", "authz_refused", "tls_handshakes_failed", "shard_id", "ring", "not_owned_packets", "ring_refused", "shard_members", "index", "indexed", "index_pending", "index_errors", "late_for_deleted")
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
    LATE_FOR_DELETED_FIELD_NUMBER: _ClassVar[int]
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
    late_for_deleted: int
    def __init__(self, controller_id: _Optional[str] = ..., version: _Optional[str] = ..., sensors: _Optional[_Iterable[_Union[SensorStatus, _Mapping]]] = ..., active_calls: _Optional[int] = ..., recordings_written: _Optional[int] = ..., storage_errors: _Optional[int] = ..., decode_errors: _Optional[int] = ..., duplicates_dropped: _Optional[int] = ..., packets_in: _Optional[int] = ..., bad_batches: _Optional[int] = ..., storage: _Optional[str] = ..., registry_state: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., storage_pending: _Optional[int] = ..., storage_retries: _Optional[int] = ..., unsignalled_media: _Optional[_Union[UnsignalledMedia, _Mapping]] = ..., authz_refused: _Optional[int] = ..., tls_handshakes_failed: _Optional[int] = ..., shard_id: _Optional[str] = ..., ring: _Optional[_Iterable[str]] = ..., not_owned_packets: _Optional[int] = ..., ring_refused: _Optional[int] = ..., shard_members: _Optional[_Iterable[_Union[ShardMember, _Mapping]]] = ..., index: _Optional[str] = ..., indexed: _Optional[int] = ..., index_pending: _Optional[int] = ..., index_errors: _Optional[int] = ..., late_for_deleted: _Optional[int] = ...) -> None: ...

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
